"""The frontier: every condition's final (gain, diversity) with seed CIs, and its diversity difference from the
reference at matched reward, checked against the effects the fake runs were built with."""

from __future__ import annotations

import pytest

from ddpo_study import report
from ddpo_study.report.frontier import fig_frontier_points, final_gains, frontier_table
from tests.report.fakes import COLLAPSE, GAIN, fake_cell


@pytest.fixture
def lora_full(tmp_path):
    for seed in range(3):
        fake_cell(tmp_path, "lora", seed=seed)
        fake_cell(tmp_path, "full", seed=seed)
    return report.load_grid_results(tmp_path)


def test_final_points_carry_the_built_in_gain_and_collapse(lora_full):
    t = frontier_table(lora_full).set_index("condition")
    assert list(t.index) == ["lora", "full"] and (t["reference"] == "lora").all() and (t["seeds"] == 3).all()
    for mode in ("lora", "full"):
        assert t.loc[mode, "reward_gain"] == pytest.approx(GAIN[mode], abs=0.01)
        assert t.loc[mode, "reward_gain_low"] < t.loc[mode, "reward_gain"] < t.loc[mode, "reward_gain_high"]
        assert t.loc[mode, "cross_div_clip"] == pytest.approx(0.3 - COLLAPSE[mode] * GAIN[mode], abs=0.01)
    assert t.loc["lora", "matched_judge_all_verdict"] == "reference"
    # judge_all falls by COLLAPSE per unit of reward: at a common level r, full - lora = (0.20 - 0.05) * (r - 1)
    level = t.loc["full", "matched_judge_all_level"]
    assert level == pytest.approx(1.0 + 0.5 * GAIN["full"], abs=0.01)
    expected = (COLLAPSE["lora"] - COLLAPSE["full"]) * (level - 1.0)
    assert t.loc["full", "matched_judge_all_diff"] == pytest.approx(expected, abs=0.005)
    assert 0 < t.loc["full", "matched_judge_all_low"] <= t.loc["full", "matched_judge_all_high"]  # no noise in it
    cross = t.loc["full", ["matched_cross_div_clip_low", "matched_cross_div_clip_diff", "matched_cross_div_clip_high"]]
    assert 0 < cross.iloc[0] < cross.iloc[1] < cross.iloc[2] and cross.iloc[1] == pytest.approx(expected, abs=0.005)
    assert t.loc["full", "matched_judge_all_verdict"].startswith("95% CI")
    # a metric the runs do not log is said so, not zero
    assert "judge_distinct_frac" not in t or t["judge_distinct_frac"].isna().all()


def test_a_condition_that_does_not_learn_is_not_matched(tmp_path):
    for seed in range(3):
        fake_cell(tmp_path, "lora", seed=seed)
        fake_cell(tmp_path, "full", seed=seed, gain=0.0)
    df = report.load_grid_results(tmp_path)
    t = frontier_table(df, reference="lora").set_index("condition")
    assert t.loc["full", "reward_gain"] == pytest.approx(0.0, abs=0.01)
    assert t.loc["full", "matched_judge_all_verdict"].startswith("not answered")
    assert final_gains(df)["reward_gain"].notna().all()


def test_the_figure_draws_one_point_per_condition(lora_full):
    fig = fig_frontier_points(lora_full)
    ax = fig.axes[0]
    assert len(ax.containers) == 2  # one errorbar container per condition
