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


def test_conditions_that_differ_only_in_a_key_their_mode_never_reads_stay_apart(tmp_path):
    """Two full-fine-tuning conditions labelled apart by lora_rank (which full never reads): each row is its
    own 3 seeds, not the 6 cells a selection by factor values would pool."""
    import json

    for seed in range(3):
        for rank in (4, 8):
            for mode in ("lora", "full"):
                gain = 0.9 if (mode, rank) == ("full", 8) else None  # the r=8 full runs gain more
                cell = fake_cell(tmp_path / f"r{rank}", mode, seed=seed, gain=gain)
                cfg = json.loads((cell / "config.json").read_text())
                (cell / "config.json").write_text(json.dumps({**cfg, "lora_rank": rank}))
    df = report.load_grid_results(tmp_path)
    t = frontier_table(df).set_index("condition")
    assert len(t) == 4 and (t["seeds"] == 3).all()
    fulls = sorted(c for c in t.index if c.startswith("full"))
    assert len(fulls) == 2 and all(t.loc[c, "matched_judge_all_verdict"].startswith("95% CI") for c in fulls)
    # each is matched at half its own gain, so the levels differ (pooled cells would give one level for both)
    levels = t.loc[fulls, "matched_judge_all_level"].to_numpy()
    assert levels == pytest.approx([1.0 + 0.5 * GAIN["full"], 1.0 + 0.5 * 0.9], abs=0.01)


def test_inference_remedies_join_the_frontier_with_their_own_reference(tmp_path, lora_full):
    """A remedies folder (as write_remedies_summary leaves it) becomes frontier rows: the tuned runs (scale 1) as
    the remedies' reference, each remedy's gain and metric with CIs over runs, and its matched difference taken
    from remedies.csv (against the runs' own trajectories), not recomputed against the grid's reference."""
    import json
    import math

    import pandas as pd

    from ddpo_study.report.frontier import REMEDY_REFERENCE, remedy_rows
    from ddpo_study.report.remedies import write_remedies_summary

    runs = tmp_path / "runs"
    for seed, (rewards, judge) in enumerate((((1.0, 2.0, 3.0), (0.8, 0.6, 0.2)), ((1.0, 2.0, 4.0), (0.9, 0.5, 0.1)))):
        cell = runs / f"r{seed}"
        cell.mkdir(parents=True)
        (cell / "config.json").write_text(json.dumps({"mode": "lora", "seed": seed}))
        pd.DataFrame({"epoch": [0, 5, 10], "reward_mean": rewards, "judge_all": judge}).to_csv(
            cell / "metrics.csv", index=False)
    point = lambda cell, seed, remedy, value, reward, judge: {  # noqa: E731
        "cell": cell, "seed": seed, "remedy": remedy, "value": value, "reward_mean": reward, "judge_all": judge,
        "final_epoch": 10}
    out = tmp_path / "remedies"
    out.mkdir()
    pd.DataFrame([point("r0", 0, "scale", 0.5, 2.5, 0.7), point("r1", 1, "scale", 0.5, 3.0, 0.5),
                  point("r0", 0, "scale", 1.0, 3.0, 0.2), point("r1", 1, "scale", 1.0, 4.0, 0.1),
                  point("r0", 0, "scale", 0.0, 1.0, 0.8)]).to_csv(out / "points.csv", index=False)
    assert remedy_rows(out).empty  # swept but not summarised yet: nothing to add
    write_remedies_summary(out, runs, ["judge_all"], [("scale", 0.5)])
    rows = remedy_rows(out, metrics=("judge_all",), matched=("judge_all",)).set_index("condition")
    assert list(rows.index) == ["inference reference: the tuned LoRA runs", "inference: LoRA scale 0.5"]
    tuned, half = rows.iloc[0], rows.iloc[1]
    assert (tuned["seeds"], tuned["reward_gain"], tuned["matched_judge_all_verdict"]) == (2, 2.5, "reference")
    # gains 1.5 and 2.0; judge 0.7 and 0.5; against the trajectories at 2.5 and 3.0 (0.4, 0.3): +0.25
    assert half["reward_gain"] == pytest.approx(1.75) and half["judge_all"] == pytest.approx(0.6)
    assert half["reward_gain_low"] < 1.75 < half["reward_gain_high"]
    assert half["reference"] == REMEDY_REFERENCE and half["matched_judge_all_diff"] == pytest.approx(0.25)
    assert half["matched_judge_all_verdict"].startswith("95% CI") and "2 of 2 runs read" in half["matched_judge_all_verdict"]
    assert half["reward_cost"] == pytest.approx(0.75)  # the tuned runs' 3.0 and 4.0 against 2.5 and 3.0
    assert math.isnan(half["matched_judge_all_level"])  # each run is read at its own reward: no single level
    fig = fig_frontier_points(lora_full, metrics=("judge_all",), remedies=rows.reset_index())
    assert len(fig.axes[0].containers) == 4  # two conditions and two remedy points


def test_the_ranking_orders_by_judge_kept_at_matched_reward_with_the_reward_given_up(tmp_path):
    """full keeps (0.20 - 0.05) x (level - 1) more of the judge than lora at matched reward and gives up
    GAIN['lora'] - GAIN['full'] of reward; progressive keeps less; a condition that never learned is listed last,
    unranked, with the verdict saying why."""
    from ddpo_study.report.frontier import remedy_ranking

    for seed in range(3):
        for mode in ("lora", "full", "progressive"):
            fake_cell(tmp_path / "grid", mode, seed=seed)
        fake_cell(tmp_path / "flat", "full", seed=seed, gain=0.0, lam=1.0)  # a separate condition that never moves
    df = report.load_grid_results(tmp_path)
    front = frontier_table(df)  # labels carry the penalty: "lora, λ=0" (the reference), "full, λ=0", ...
    ranked = remedy_ranking(front, df)
    assert "lora, λ=0" not in set(ranked["condition"])  # the reference is not ranked against itself
    assert list(ranked["rank"]) == ["1", "2", ""]
    first, second, last = (ranked.iloc[i] for i in range(3))
    assert [first["condition"], second["condition"], last["condition"]] == ["full, λ=0", "progressive, λ=0", "full, λ=1"]
    level = front.set_index("condition").loc["full, λ=0", "matched_judge_all_level"]
    assert first["judge_all_kept"] == pytest.approx((COLLAPSE["lora"] - COLLAPSE["full"]) * (level - 1.0), abs=0.005)
    assert first["judge_all_kept"] > second["judge_all_kept"] > 0
    assert first["reward_cost"] == pytest.approx(GAIN["lora"] - GAIN["full"], abs=0.01)
    assert first["reward_cost_low"] <= first["reward_cost"] <= first["reward_cost_high"]
    assert last["verdict"].startswith("not answered") and last["reward_cost"] == pytest.approx(GAIN["lora"], abs=0.01)
