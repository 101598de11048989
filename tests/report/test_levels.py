"""Matched-reward levels: per reward, only after both conditions moved (monotone in evals), progressive only after
its switch."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ddpo_study import report
from tests.report.fakes import GAIN, eval_frame, fake_cell

EPOCHS = (0, 5, 10, 15, 20)


def runs(name: str, gains: list[float], seeds: int = 3, epochs=EPOCHS, noise: float = 0.001, base: float = 1.0,
         **kw) -> pd.DataFrame:
    """``seeds`` runs of one condition whose eval reward is base + gains at ``epochs`` (+ small noise after 0)."""
    rng = np.random.default_rng(len(name))
    curves = {f"{name}-s{s}": [(e, base + g + (noise * rng.standard_normal() if e else 0.0))
                               for e, g in zip(epochs, gains)] for s in range(seeds)}
    return eval_frame(curves, **kw)


def test_crossing():
    run = pd.DataFrame({"epoch": [0, 2, 4], "reward_mean": [0.0, 1.0, 0.5], "x": [10.0, 20.0, 0.0]})
    assert report.crossing(run, 0.5, "x") == (15.0, 1.0, 0.0)  # first crossing, interpolated from the eval at 0
    assert report.crossing(run, 1.0, "x") == (20.0, 2.0, 0.0)
    assert report.crossing(run, -1.0, "x") == (10.0, 0.0, 0.0)
    assert all(math.isnan(v) for v in report.crossing(run, 2.0, "x"))


def test_reward_levels_common_and_best(fake_grid):
    df = report.load_grid_results(fake_grid)
    levels = report.reward_levels(df)
    assert len(levels) == 3 and 1.0 < levels[0] < levels[1] < levels[2] < 1.0 + min(GAIN.values()) - 0.2 + 0.01
    best = report.reward_levels(df, top="best")
    assert best[2] > levels[2] and best[2] < 1.0 + max(GAIN.values()) + 0.01
    with pytest.raises(ValueError, match="top"):
        report.reward_levels(df, top="max")


def test_levels_are_per_reward_never_averaged_across_rewards(tmp_path):
    for seed in range(2):
        for mode in ("lora", "full"):
            fake_cell(tmp_path, mode, seed=seed, reward="jpeg_compressibility", base=-0.9, gain=0.02 * GAIN[mode])
            fake_cell(tmp_path, mode, seed=seed, reward="aesthetic", base=5.5, gain=GAIN[mode])
    df = report.load_grid_results(tmp_path)
    with pytest.raises(ValueError, match="several rewards"):
        report.reward_levels(df)
    by = report.levels_by_reward(df, top="best")
    assert set(by) == {"aesthetic", "jpeg_compressibility"}
    assert all(5.5 < lv < 6.5 for lv in by["aesthetic"]) and all(-0.9 < lv < -0.87 for lv in by["jpeg_compressibility"])
    table = report.matched_reward_table(df)
    for reward, levels in by.items():
        got = table.loc[table["reward"] == reward, "reward_level"].round(9)
        assert set(got) == set(np.round(levels, 9))
    runs_ = report.matched_runs(df)
    assert set(runs_["reward"]) == set(by) and runs_["epoch_reached"].notna().any()


def test_levels_are_per_base_model_and_a_pair_across_base_models_is_refused():
    """Two base models on one reward (study v3's UNet and flow toys) start from different rewards: each gets its
    own levels, and a contrast across them has none."""
    unet = runs("lora", [0.0, 0.2, 0.4, 0.6, 0.8]).assign(model="toy")
    flow = runs("full", [0.0, 0.1, 0.2, 0.3, 0.4], base=3.0, mode="full").assign(model="toy-flow")
    by = report.levels_by_reward(pd.concat([unet, flow]), top="best")
    assert set(by) == {"jpeg_compressibility (toy)", "jpeg_compressibility (toy-flow)"}
    assert all(1.0 < lv < 1.81 for lv in by["jpeg_compressibility (toy)"])
    assert all(3.0 < lv < 3.41 for lv in by["jpeg_compressibility (toy-flow)"])
    assert report.levels_by_reward(unet, top="best").keys() == {"jpeg_compressibility"}  # one model: as before
    got = report.matched_levels(unet, flow, ("lora", "full"))
    assert not got.levels and "different base models (lora: toy; full: toy-flow)" in got.reason


def test_levels_refuse_to_sit_before_both_conditions_moved():
    fast = runs("lora", [0.0, 0.8, 0.9, 1.0, 1.0])  # gains 80% of its run by the first eval
    slow = runs("full", [0.0, 0.1, 0.3, 0.5, 0.6], mode="full")
    got = report.matched_levels(fast, slow, ("lora", "full"))
    assert not got.reason and [g.moved for g in got.gains] == [True, True]
    assert [lv.value for lv in got.levels] == pytest.approx([1.15, 1.3, 1.45], abs=0.003)  # of the smaller gain
    for lv in got.levels:  # LoRA is above every level at epoch 5: each reading would be interpolated from the base
        assert lv.refused == "lora: 3 of 3 runs reach it by their first eval after epoch 0"
    # evals early enough: the same levels are read
    early = runs("lora", [0.0, 0.05, 0.2, 0.5, 0.8, 0.9, 1.0], epochs=(0, 1, 2, 3, 4, 10, 20))
    got = report.matched_levels(early, slow, ("lora", "full"))
    assert [lv.refused for lv in got.levels] == ["", "", ""]


def test_no_levels_when_a_condition_did_not_move_significantly():
    moved = runs("lora", [0.0, 0.1, 0.2, 0.3, 0.4])
    flat = runs("full", [0.0, 0.0, 0.0, 0.0, 0.0], noise=0.01, mode="full")
    got = report.matched_levels(moved, flat, ("lora", "full"))
    assert got.levels == () and got.reason.startswith("full did not move (")
    assert "one-sided p" in got.reason and "over 3 seeds" in got.reason
    got = report.matched_levels(runs("lora", [0] * 5, noise=0.01), flat, ("lora", "full"))
    assert got.reason.startswith("neither condition moved")
    one = report.matched_levels(runs("lora", [0.0, 0.1, 0.2, 0.3, 0.4], seeds=1), moved, ("lora", "full"))
    assert one.reason.startswith("too few seeds to tell whether lora moved (lora: mean gain +0.40")
    assert "from 1 seed (needs >= 2 to test)" in one.reason
    other = report.matched_levels(moved, runs("full", [0.0, 0.1, 0.2, 0.3, 0.4], reward="aesthetic"), ("a", "b"))
    assert other.reason.startswith("the conditions use different rewards")


def q3_like(epochs=(0, 5, 10, 15, 20)) -> pd.DataFrame:
    """Three seeds that agree on a gain of +0.2 to +0.3 by epoch 20, then one breaks while the other two climb:
    from epoch 25 on the seed-mean gain is the highest (the old rule tested there) and the seeds disagree."""
    later = {25: (0.9, -0.3, 0.6), 30: (1.3, -0.4, 1.0), 35: (1.6, -0.5, 1.2)}
    curves = {}
    for s, early in enumerate(((0.0, 0.10, 0.15, 0.22, 0.24), (0.0, 0.12, 0.20, 0.28, 0.31),
                               (0.0, 0.08, 0.14, 0.19, 0.20))):
        gains = dict(zip((0, 5, 10, 15, 20), early)) | {e: g[s] for e, g in later.items()}
        curves[f"lam10-s{s}"] = [(e, 1.0 + gains[e]) for e in epochs]
    return eval_frame(curves)


def test_moved_is_any_eval_passing_and_stays_moved_when_evals_are_appended():
    short = report.condition_gain(q3_like(), "lam10")
    assert short.moved and short.first_epoch == 5 and short.tested == 4
    assert short.epoch == 20 and short.n == 3 and short.gain == pytest.approx(0.25) and short.p < 0.05
    # the same runs continued to epoch 35: seed 1 broke, the mean rises, the test fails at each of the new evals
    long = report.condition_gain(q3_like((0, 5, 10, 15, 20, 25, 30, 35)), "lam10")
    ev = q3_like((0, 5, 10, 15, 20, 25, 30, 35))
    late = ev[ev["epoch"] == 35].groupby("cell")["reward_mean"].first() - 1.0
    assert late.mean() > long.gain and report.one_sided_gain_p(late.to_numpy()) >= 0.05
    # moved still (adding evals only adds candidates); the levels' gain is the passing eval's, not the inflated mean
    assert long.moved and (long.first_epoch, long.epoch, long.gain) == (short.first_epoch, 20, short.gain)
    text = long.describe()
    assert text.startswith("lam10: moved from epoch 5 (first eval with one-sided p < 0.05)")
    assert "highest mean gain where it passes +0.25 at epoch 20, one-sided p" in text and "over 3 seeds" in text
    # a matched-reward contrast is read at fractions of that gain (the Q3 case: it used to read "did not move")
    got = report.matched_levels(ev, runs("lora", [0.0, 0.3, 0.5, 0.7, 0.9]), ("lam10", "lora"))
    assert not got.reason and got.gains[0].moved
    assert [lv.value for lv in got.levels] == pytest.approx([1 + f * 0.25 for f in report.MATCH_FRACTIONS])


def test_moved_for_every_prefix_of_the_evals_once_it_has_moved():
    epochs = (0, 5, 10, 15, 20, 25, 30, 35)
    ev = q3_like(epochs)
    verdicts = [report.condition_gain(ev[ev["epoch"] <= last], "lam10") for last in epochs[1:]]
    first = next(i for i, g in enumerate(verdicts) if g.moved)
    assert all(g.moved for g in verdicts[first:]) and verdicts[first].first_epoch == epochs[1 + first]
    gains = [g.gain for g in verdicts[first:]]
    assert gains == sorted(gains)  # the levels' gain can only grow as evals are added


def test_not_moved_reports_the_highest_mean_and_the_evals_tested():
    flat = runs("full", [0.0, 0.0, 0.0, 0.0, 0.0], noise=0.01, mode="full")
    g = report.condition_gain(flat, "full")
    assert not g.moved and math.isnan(g.first_epoch) and g.tested == 4
    assert g.describe().startswith("full: one-sided p >= 0.05 at each of 4 evals; highest mean gain")


def test_progressive_is_read_only_after_its_switch():
    # progressive gains most in its full phase (epochs 0-5), then keeps gaining as LoRA
    prog = runs("progressive", [0.0, 0.5, 0.55, 0.7, 0.9], mode="progressive", switch=5)
    lora = runs("lora", [0.0, 0.1, 0.3, 0.6, 0.9])
    got = report.matched_levels(prog, lora, ("progressive", "lora"), fractions=(0.25, 0.5, 0.6, 0.75))
    assert got.gains[0].start == 5 and got.gains[0].gain == pytest.approx(0.9, abs=0.003)
    refused = [lv.refused for lv in got.levels]
    why = "progressive: 3 of 3 runs reach it by their first eval after the switch (epoch 5)"
    assert refused[0] == refused[1] == why  # 0.225 and 0.45: crossed in the full phase
    assert refused[2] == why  # 0.54: crossed between the switch and the first eval after it
    assert refused[3] == ""  # 0.675: crossed between epochs 10 and 15, in the LoRA phase
    # only the full phase gained: progressive did not move after its switch
    stuck = runs("progressive", [0.0, 0.9, 0.9, 0.9, 0.9], mode="progressive", switch=5, noise=0.01)
    got = report.matched_levels(stuck, lora, ("progressive", "lora"))
    assert not got.reason and all(lv.refused == why for lv in got.levels)  # Q4's trap: read in the full phase
    assert report.read_after_epoch(stuck) == 5 and report.read_after_epoch(lora) == 0


def test_matched_runs_flag_readings_before_the_first_eval(fake_grid):
    df = report.load_grid_results(fake_grid)
    m = report.matched_runs(df, levels=[1.05, 1.6])
    low, high = m[m["reward_level"] == 1.05], m[m["reward_level"] == 1.6]
    assert low["early"].all()  # every run is past 1.05 at epoch 2
    lora = high[high["condition"].str.startswith("toy_30, lora")]
    assert not lora["early"].any() and lora["epoch_reached"].between(2, 12).all()


def test_moved_table_reads_every_condition(fake_grid):
    df = report.load_grid_results(fake_grid)
    table = report.moved_table(df)
    assert list(table.columns) == report.levels.MOVED_COLUMNS
    assert table["condition"].tolist() == report.conditions(df) and table["moved"].all()
    assert (table["evals_passed"] <= table["evals_tested"]).all() and (table["evals_tested"] <= table["evals"]).all()
    assert (table["first_epoch"] <= table["gain_epoch"]).all() and (table["p"] < 0.05).all()
