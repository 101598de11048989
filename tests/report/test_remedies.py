"""Inference-time remedies against early stopping: each point read on its own run's trajectory at the same
reward, refused where that would be interpolated from the base model or never reached; checked by hand."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from ddpo_study.report.remedies import load_runs, matched_points, remedies_table, write_remedies_summary

T_1DF = 12.706204736174707  # t_{0.975} with 1 degree of freedom


def _run(root, name, seed, rewards, judge):
    cell = root / name
    cell.mkdir(parents=True)
    (cell / "config.json").write_text(json.dumps({"mode": "lora", "seed": seed}))
    rows = [{"epoch": e, "reward_mean": r, "judge_all": j} for e, r, j in zip((0, 5, 10), rewards, judge)]
    rows.insert(1, {"epoch": 1, "reward_mean": math.nan, "judge_all": math.nan})  # a training-only row
    pd.DataFrame(rows).to_csv(cell / "metrics.csv", index=False)


def _point(cell, seed, remedy, value, reward, judge):
    return {"cell": cell, "seed": seed, "remedy": remedy, "value": value, "reward_mean": reward, "judge_all": judge,
            "final_epoch": 10, "check_final_reward_diff": 0.0, "check_base_reward_diff": 0.0}


@pytest.fixture
def two_runs(tmp_path):
    _run(tmp_path, "a", 0, (1.0, 2.0, 3.0), (0.8, 0.6, 0.2))
    _run(tmp_path, "b", 1, (1.0, 2.0, 4.0), (0.9, 0.5, 0.1))
    points = pd.DataFrame([
        _point("a", 0, "scale", 0.5, 2.5, 0.7),   # trajectory at 2.5: halfway 5 -> 10, judge 0.4, epoch 7.5
        _point("b", 1, "scale", 0.5, 3.0, 0.5),   # trajectory at 3.0: halfway 5 -> 10, judge 0.3
        _point("a", 0, "switch", 2.0, 1.5, 0.8),  # reached between epoch 0 and the first eval: refused
        _point("b", 1, "switch", 2.0, 4.5, 0.1),  # above anything the run reached: refused
        _point("a", 0, "scale", 1.0, 3.0, 0.2),   # the tuned model itself: a check, not a remedy
    ])
    return tmp_path, points


def test_points_are_read_on_their_own_trajectory_at_the_same_reward(two_runs):
    root, points = two_runs
    m = matched_points(points, load_runs(points, root), ["judge_all"]).set_index(["cell", "remedy", "value"])
    a, b = m.loc[("a", "scale", 0.5)], m.loc[("b", "scale", 0.5)]
    assert (a["train_judge_all"], a["train_epoch"], a["refused"]) == (pytest.approx(0.4), pytest.approx(7.5), "")
    assert b["train_judge_all"] == pytest.approx(0.3)
    assert a["reward_gain"] == pytest.approx(1.5) and a["reward_cost"] == pytest.approx(0.5)
    assert m.loc[("a", "switch", 2.0), "refused"] == "before the first eval"
    assert m.loc[("a", "scale", 1.0), "refused"] == ""  # reached at the final eval itself
    assert m.loc[("b", "switch", 2.0), "refused"] == "never reached"
    assert math.isnan(m.loc[("a", "switch", 2.0), "train_judge_all"])


def test_table_pairs_by_seed_and_counts_refusals(two_runs):
    root, points = two_runs
    matched = matched_points(points, load_runs(points, root), ["judge_all"])
    t = remedies_table(matched, ["judge_all"], [("scale", 0.5), ("switch", 2.0)]).set_index(["remedy", "value"])
    assert list(t.index) == [("scale", 0.5), ("switch", 2.0)]  # scale 1 (the tuned model) is not a remedy
    s = t.loc[("scale", 0.5)]
    # differences 0.7 - 0.4 = 0.3 and 0.5 - 0.3 = 0.2: mean 0.25, sd 0.0707, se 0.05
    assert (s["role"], s["runs"], s["read"]) == ("primary", 2, 2)
    assert s["judge_all_vs_train"] == pytest.approx(0.25)
    assert s["judge_all_vs_train_low"] == pytest.approx(0.25 - T_1DF * 0.05)
    assert s["judge_all_vs_train_high"] == pytest.approx(0.25 + T_1DF * 0.05)
    sw = t.loc[("switch", 2.0)]
    assert (sw["read"], sw["refused"]) == (0, "1 before the first eval; 1 never reached")
    assert math.isnan(sw["judge_all_vs_train"])
    # Holm over both primaries: switch 2 has no p-value and counts as p = 1, so the family stays two
    assert s["judge_all_vs_train_p_holm"] == pytest.approx(min(1.0, 2 * s["judge_all_vs_train_p"]))
    assert sw["judge_all_vs_train_p_holm"] == 1.0
    # effect 0.25 / 0.0707 = 3.54 sd at alpha 0.05 / 2: a paired t-test needs 4 seeds for power 0.8
    assert s["judge_all_seeds_needed"] == 4


def test_summary_files_are_written_and_reproducible(two_runs):
    root, points = two_runs
    out = root / "remedies"
    out.mkdir()
    points.to_csv(out / "points.csv", index=False)
    files = write_remedies_summary(out, root, ["judge_all"], [("scale", 0.5)])
    first = {f.name: f.read_bytes() for f in files}
    assert {"remedies.csv", "remedies.md", "matched_points.csv", "checks.md", "remedies.png"} <= set(first)
    write_remedies_summary(out, root, ["judge_all"], [("scale", 0.5)])
    assert {f.name: f.read_bytes() for f in files} == first


def test_checks_compare_scale_one_with_the_final_eval(two_runs):
    from ddpo_study.report.remedies import checks_table

    root, points = two_runs
    points = pd.concat([points, pd.DataFrame([_point("b", 1, "scale", 1.0, 3.9, 0.15)])], ignore_index=True)
    c = checks_table(points, load_runs(points, root), ["judge_all"]).set_index("cell")
    assert c.loc["a", "final_reward_mean_diff"] == pytest.approx(0.0) and c.loc["a", "final_judge_all_diff"] == 0.0
    assert c.loc["b", "final_reward_mean_diff"] == pytest.approx(-0.1)
    assert c.loc["b", "final_judge_all_diff"] == pytest.approx(0.05)
    assert "base_reward_mean_diff" not in c  # no run had a scale-0 point: nothing to check, no made-up zero
