"""Grid tables: did each run learn (paired gain clustered by prompt), matched reward per reward."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ddpo_study import report


def test_paired_reward_gain_equals_a_hand_computation(tmp_path):
    cell = tmp_path / "cell"
    (cell / "eval").mkdir(parents=True)
    imgs = np.zeros((2, 2, 4, 4, 3), dtype=np.uint8)
    for epoch, rewards in ((0, [[1, 2], [3, 4]]), (5, [[2, 2], [5, 5]])):
        np.savez_compressed(cell / "eval" / f"epoch_{epoch:04d}.npz", images=imgs, prompts=np.array(["a", "b"]),
                            rewards=np.array(rewards, dtype=np.float64))
    got = report.paired_reward_gain(cell)
    # differences [[1, 0], [2, 1]]: mean 1; prompt means 0.5 and 1.5, so the SE clustered by prompt is
    # sd(0.5, 1.5) / sqrt(2) = 0.5; as 4 independent images it would be sd(1, 0, 2, 1) / 2 = sqrt(2/3) / 2
    assert got["epoch"] == 5 and got["n_images"] == 4 and got["n_prompts"] == 2
    assert got["reward_0"] == 2.5 and got["reward_end"] == 3.5 and got["gain"] == 1.0
    assert got["gain_se"] == pytest.approx(0.5) and got["z"] == pytest.approx(2.0)
    assert got["gain_se_iid"] == pytest.approx(math.sqrt(2 / 3) / 2)
    assert got["z_iid"] == pytest.approx(2 / math.sqrt(2 / 3))
    np.savez_compressed(cell / "eval" / "epoch_0005.npz", images=imgs, prompts=np.array(["a", "b"]))
    assert math.isnan(report.paired_reward_gain(cell)["z"])  # older runs without per-image rewards


def test_learning_table_flags_runs_that_gained_more_than_three_clustered_standard_errors(fake_grid):
    table = report.learning_table(report.load_grid_results(fake_grid))
    assert len(table) == 36 and table["learned"].all()  # every fake run gains >= 0.4 with noise 0.05
    assert (table["epoch"] == 12).all() and (table["n_images"] == 8).all() and (table["n_prompts"] == 4).all()


def test_matched_reward_table_uses_the_best_conditions_levels(fake_grid):
    df = report.load_grid_results(fake_grid)
    table = report.matched_reward_table(df)
    assert len(table) == 12 * 3 and set(table["reward"]) == {"jpeg_compressibility"}
    assert set(table["reward_level"].round(9)) == set(np.round(report.reward_levels(df, top="best"), 9))
    row = table[(table["condition"] == "toy_30, lora, λ=0") & (table["fraction"] == 0.75)].iloc[0]
    assert row["runs_reaching"] == 3 and row["runs_early"] == 0
    expected = 0.3 - 0.20 * (row["reward_level"] - 1.0)
    assert row["cross_div_clip_mean"] == pytest.approx(expected, abs=0.005)
    # the lowest level: LoRA's runs are past it at their first eval, so nothing is read there; full's are not
    low = table[table["fraction"] == 0.25].set_index("condition")
    lora = low.loc["toy_30, lora, λ=0"]
    assert lora["runs_early"] == 3 and np.isnan(lora["cross_div_clip_mean"])
    assert low.loc["toy_30, full, λ=0", "runs_early"] == 0 and low.loc["toy_30, full, λ=0", "runs_reaching"] == 3
    # a condition that only ever gets worse is listed with no runs reaching any level; the table stays
    flat = df["condition"] == "toy_300, full, λ=0"
    base = float(df.loc[df["epoch"] == 0, "reward_mean"].mean())
    df.loc[flat & (df["epoch"] > 0), "reward_mean"] = base - 0.1
    assert report.reward_levels(df) == []
    table = report.matched_reward_table(df)
    assert (table.loc[table["condition"] == "toy_300, full, λ=0", "runs_reaching"] == 0).all()
    assert table["runs_reaching"].max() == 3


def test_final_and_cells_tables(fake_grid):
    df = report.load_grid_results(fake_grid)
    final = report.final_table(df).set_index("condition")
    assert len(final) == 12 and (final["seeds"] == 3).all() and (final["epoch"] == 12).all()
    assert final.loc["toy_30, lora, λ=0", "reward_mean"] == pytest.approx(2.0, abs=0.01)
    assert len(report.cells_table(df)) == 36


def test_late_gain_fraction_and_the_plateau_flag(fake_grid):
    import pandas as pd

    def run(rewards):  # evals every 10 epochs from 0
        return pd.DataFrame({"epoch": [10 * i for i in range(len(rewards))], "reward_mean": rewards})

    # 0 -> 80 epochs; the last eval at or before 60 is epoch 60: (1.05 - 1.00) / (1.05 - 0.00)
    assert report.late_gain_fraction(run([0, .5, .8, .9, .95, .98, 1.0, 1.02, 1.05])) == pytest.approx(0.05 / 1.05)
    assert report.late_gain_fraction(run([0, .1, .2, .3, .4, .5, .6, .8, 1.0])) == pytest.approx(0.4)
    assert math.isnan(report.late_gain_fraction(run([0, -.1, -.2, -.3])))  # no gain: no plateau to speak of
    # the fake runs rise as (e / 12) ** 0.7 with evals every 2 epochs: 1 - (8 / 12) ** 0.7 of the gain comes late
    t = report.learning_table(report.load_grid_results(fake_grid))
    assert t["late_gain_frac"].to_numpy() == pytest.approx(1 - (8 / 12) ** 0.7, abs=0.03)
    assert not t["plateaued"].any() and report.PLATEAU_LATE_GAIN < 1 - (8 / 12) ** 0.7


def test_first_flat_epoch_is_the_first_eval_where_the_plateau_rule_held():
    import pandas as pd

    def run(rewards):  # evals every 10 epochs from 0
        return pd.DataFrame({"epoch": [10 * i for i in range(len(rewards))], "reward_mean": rewards})

    levelling = run([0, .5, .8, .9, .95, .98, 1.0, 1.02, 1.05])
    # epoch 40: (0.95 - 0.90) / 0.95 = 0.053 <= 0.15, with the last eval at or before 30 (= 0.75 * 40) as e'
    assert report.first_flat_epoch(levelling) == 40
    # a gain must exceed 2 standard errors: with se 0.5 the first is epoch 70, (1.02 - 0.98) / 1.02 (e' = 50)
    assert report.first_flat_epoch(levelling, noise=0.5) == 70
    # levels off at epoch 40, then climbs again: flat early, yet 40% of the final gain comes in the last quarter
    stairs = run([0, .3, .6, .62, .63, .64, 1.2, 1.5, 2.0])
    assert report.first_flat_epoch(stairs) == 40 and report.late_gain_fraction(stairs) == pytest.approx(0.4)
    assert math.isnan(report.first_flat_epoch(run([0, .1, .2, .3, .4, .5, .6, .7, .8])))  # still climbing
    assert math.isnan(report.first_flat_epoch(run([0, .5, .6, .6])))  # fewer than 4 evals after epoch 0
    assert math.isnan(report.first_flat_epoch(run([0, -.1, -.1, -.1, -.1, -.1])))  # no gain


def test_the_peak_and_the_rise_after_the_first_flat_epoch_mark_a_false_plateau():
    import pandas as pd

    def run(rewards):  # evals every 10 epochs from 0
        return pd.DataFrame({"epoch": [10 * i for i in range(len(rewards))], "reward_mean": rewards})

    stairs = run([0, .3, .6, .62, .63, .64, 1.2, 1.5, 2.0, 1.9])  # flat at epoch 40, then climbs to 2.0 at 80
    flat = report.first_flat_epoch(stairs)
    assert flat == 40
    out = report.peak_and_rise_after(stairs, flat)
    assert out == {"peak_epoch": 80.0, "peak_reward": 2.0, "gain_after_flat": pytest.approx(2.0 - .63)}
    # a true plateau: nothing after the first flat epoch beats it by more than the wobble
    level = run([0, .5, .8, .9, .95, .94, .95, .93])
    out = report.peak_and_rise_after(level, report.first_flat_epoch(level))
    assert out["peak_epoch"] == 40 and out["gain_after_flat"] == pytest.approx(0.0)
    # ties: the first eval at the maximum; no first flat epoch: no rise
    out = report.peak_and_rise_after(run([0, 1, 1, .5]))
    assert out["peak_epoch"] == 10 and math.isnan(out["gain_after_flat"])


def test_the_largest_fall_runs_from_the_best_eval_so_far_to_the_lowest_after_it():
    import pandas as pd

    def run(rewards):  # evals every 5 epochs from 0
        return pd.DataFrame({"epoch": [5 * i for i in range(len(rewards))], "reward_mean": rewards})

    # two falls: 1.0 -> 0.7 (epochs 10-15) and 1.5 -> 0.9 (epochs 25-35); the second is larger
    out = report.largest_fall(run([0, .5, 1.0, .7, 1.2, 1.5, 1.1, .9, 1.6]))
    assert out == {"largest_fall": pytest.approx(.6), "fall_from_epoch": 25.0, "fall_to_epoch": 35.0}
    # the fall is measured from the best eval before it, not the eval just before it
    out = report.largest_fall(run([0, 2.0, 1.8, 1.9, 1.0]))
    assert out == {"largest_fall": pytest.approx(1.0), "fall_from_epoch": 5.0, "fall_to_epoch": 20.0}
    never = report.largest_fall(run([0, .1, .1, .3]))  # a tie is not a fall
    assert never["largest_fall"] == 0.0 and math.isnan(never["fall_from_epoch"]) and math.isnan(never["fall_to_epoch"])


def test_the_step_kl_summary_is_the_geometric_mean_of_the_logged_steps():
    import pandas as pd

    run = pd.DataFrame({"epoch": [0, 1, 2, 3], "train_step_kl": [math.nan, 1e-3, 4e-3, 2e-3]})
    assert report.step_kl_gmean(run) == pytest.approx((1e-3 * 4e-3 * 2e-3) ** (1 / 3))
    assert math.isnan(report.step_kl_gmean(pd.DataFrame({"epoch": [0, 1]})))  # no controller log


def test_a_run_still_training_is_not_finished_and_has_no_plateau(tmp_path):
    import pandas as pd

    from tests.report.fakes import fake_cell

    fake_cell(tmp_path, "lora", seed=0)
    fake_cell(tmp_path, "lora", seed=1)
    cell = next(p for p in tmp_path.iterdir() if p.name.endswith("-s0"))
    metrics = pd.read_csv(cell / "metrics.csv")
    metrics[metrics["epoch"] <= 8].to_csv(cell / "metrics.csv", index=False)  # 8 of its 12 epochs so far
    (cell / "DONE").unlink()  # with it, the cut metrics would be a damaged finished run (tests/test_rundir.py)
    t = report.learning_table(report.load_grid_results(tmp_path)).set_index("seed")
    assert t.loc[0, "finished"] == False and t.loc[1, "finished"] == True  # noqa: E712
    assert t.loc[0, "plateaued"] == False  # noqa: E712


def test_a_runs_collapse_compares_its_last_eval_with_its_epoch_0():
    import pandas as pd

    run = pd.DataFrame({"epoch": [0, 1, 5, 10], "cross_div_clip": [1.0, math.nan, 0.9, 0.1],
                        "retrieval_acc": [1.0, math.nan, 0.9, 0.05]})  # epoch 1: a training row, no eval
    assert report.run_collapse(run, -8.0) == "broke" and report.run_collapse(run, 7.0) == "maximised"
    kept = run.assign(cross_div_clip=[1.0, math.nan, 0.9, 0.96], retrieval_acc=[1.0, math.nan, 0.9, 0.95])
    assert report.run_collapse(kept, 7.0) == "kept prompts"  # the last eval decides, not the one before it
    assert report.run_collapse(run[run["epoch"] > 0], 7.0) == ""  # no epoch-0 eval to compare with
