"""Report figures and tables from saved results: statistics, matched reward, the four questions, determinism.

The results here are synthetic run folders (config.json, metrics.csv, eval npz) with known effects, so the
computed answers can be checked against what was put in; nothing trains.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from ddpo_study import report
from ddpo_study.config import DDPOConfig

COLLAPSE = {"lora": 0.20, "full": 0.05, "progressive": 0.10}  # cross-div lost per unit of reward gained
GAIN = {"lora": 1.0, "full": 0.6, "progressive": 0.8}  # reward gained over the run


def fake_cell(root, mode="lora", prompt_set="toy_30", lam=0.0, seed=0, epochs=4, eval_every=2, p=4, s=2):
    name = f"{prompt_set}-{mode}-lam{lam}-s{seed}"
    cell = root / name
    (cell / "eval").mkdir(parents=True)
    cfg = DDPOConfig(output_dir=str(cell), mode=mode, prompt_set=prompt_set, diversity_lambda=lam, seed=seed,
                     num_epochs=epochs, eval_every=eval_every, progressive_switch_epoch=2)
    (cell / "config.json").write_text(json.dumps(cfg.to_dict()))
    rng = np.random.default_rng([seed, len(name)])
    gain = GAIN[mode] - (0.2 if lam else 0.0)
    collapse = COLLAPSE[mode] * (0.5 if prompt_set == "toy_300" else 1.0) * (0.5 if lam else 1.0)
    rows = []
    for e in range(epochs + 1):
        reward = 1.0 + gain * e / epochs + (0.004 * rng.standard_normal() if e else 0.0)
        row = {"epoch": e, "train_reward_mean": reward - 0.01, "param_dist": 0.1 * e,
               "train_approx_kl": 1e-4 * e if e else np.nan, "train_clipfrac": 0.01 * e if e else np.nan,
               "phase": ("lora" if mode == "lora" or (mode == "progressive" and e > 2) else "full") if e else np.nan}
        if e % eval_every == 0 or e == epochs:
            row.update(reward_mean=reward, cross_div_clip=0.3 - collapse * (reward - 1.0) + 0.001 * rng.standard_normal(),
                       within_div_clip=0.2, cross_div_pixel=40.0, within_div_pixel=30.0, retrieval_acc=0.5 - collapse * e / 8,
                       retrieval_chance=1 / p, clip_score=0.3, vendi_clip=3.0, dist_base_clip=0.01 * e,
                       dist_base_pixel=float(e), time_eval_s=0.1)
        rows.append(row)
    pd.DataFrame(rows).to_csv(cell / "metrics.csv", index=False)
    for e in sorted({0, *range(eval_every, epochs + 1, eval_every), epochs}):
        imgs = rng.integers(0, 256, size=(p, s, 8, 8, 3), dtype=np.uint8)
        per_image = 1.0 + gain * e / epochs + 0.05 * rng.standard_normal((p, s))
        np.savez_compressed(cell / "eval" / f"epoch_{e:04d}.npz", images=imgs, rewards=per_image,
                            prompts=np.array([f"prompt {i}" for i in range(p)]))
    (cell / "DONE").write_text(json.dumps({"epochs": epochs}))
    return cell


@pytest.fixture(scope="module")
def fake_grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("fake-grid")
    for seed in range(3):
        for prompt_set in ("toy_30", "toy_300"):
            for mode in ("lora", "full", "progressive"):
                for lam in (0.0, 0.5):
                    fake_cell(root, mode, prompt_set, lam, seed)
    return root


def test_load_grid_results_adds_config_columns_and_condition_labels(fake_grid):
    df = report.load_grid_results(fake_grid)
    assert df["cell"].nunique() == 36 and len(df) == 36 * 5
    for col in ("prompt_set", "mode", "diversity_lambda", "seed", "condition", "reward_mean", "done"):
        assert col in df, col
    assert df.attrs["factors"] == ["prompt_set", "mode", "diversity_lambda"]
    conds = report.conditions(df)
    assert len(conds) == 12 and conds[0] == "toy_30, lora, λ=0"  # fewest prompts, LoRA, no penalty first
    assert set(df.groupby("condition")["seed"].nunique()) == {3}


def test_statistics():
    m, lo, hi, n = report.mean_ci([1.0, 2.0, 3.0])
    assert (m, n) == (2.0, 3) and hi - m == pytest.approx(4.302653 * 1 / math.sqrt(3), rel=1e-5)
    assert math.isnan(report.mean_ci([1.0])[1])
    diff, lo, hi = report.welch_ci([1, 2, 3], [4, 5, 6])  # se = sqrt(2/3), Welch df = 4, t = 2.776445
    assert diff == -3 and hi - diff == pytest.approx(2.776445 * math.sqrt(2 / 3), rel=1e-5)
    run = pd.DataFrame({"epoch": [0, 2, 4], "reward_mean": [0.0, 1.0, 0.5], "x": [10.0, 20.0, 0.0]})
    assert report.value_at_reward(run, 0.5, "x") == (15.0, 1.0)  # first crossing, interpolated
    assert report.value_at_reward(run, 1.0, "x") == (20.0, 2.0)
    assert all(math.isnan(v) for v in report.value_at_reward(run, 2.0, "x"))


def test_reward_levels_common_and_best(fake_grid):
    df = report.load_grid_results(fake_grid)
    levels = report.reward_levels(df)
    assert len(levels) == 3 and 1.0 < levels[0] < levels[1] < levels[2] < 1.0 + min(GAIN.values()) - 0.2 + 0.01
    best = report.reward_levels(df, top="best")
    assert best[2] > levels[2] and best[2] < 1.0 + max(GAIN.values()) + 0.01
    with pytest.raises(ValueError, match="top"):
        report.reward_levels(df, top="max")


def test_matched_reward_table_uses_the_best_conditions_levels(fake_grid):
    df = report.load_grid_results(fake_grid)
    table = report.matched_reward_table(df)
    assert len(table) == 12 * 3
    assert set(table["reward_level"].round(9)) == set(np.round(report.reward_levels(df, top="best"), 9))
    row = table[(table["condition"] == "toy_30, lora, λ=0") & (table["fraction"] == 0.25)].iloc[0]
    assert row["runs_reaching"] == 3
    expected = 0.3 - COLLAPSE["lora"] * (row["reward_level"] - 1.0)
    assert row["cross_div_clip_mean"] == pytest.approx(expected, abs=0.005)
    # a condition that only ever gets worse is listed with no runs reaching any level; the table stays
    flat = df["condition"] == "toy_300, full, λ=0"
    base = float(df.loc[df["epoch"] == 0, "reward_mean"].mean())
    df.loc[flat & (df["epoch"] > 0), "reward_mean"] = base - 0.1
    assert report.reward_levels(df) == []
    table = report.matched_reward_table(df)
    assert (table.loc[table["condition"] == "toy_300, full, λ=0", "runs_reaching"] == 0).all()
    assert table["runs_reaching"].max() == 3


def test_the_four_questions_are_answered_from_the_numbers(fake_grid):
    df = report.load_grid_results(fake_grid)
    q = report.questions_table(df).set_index("id")
    assert list(q.index) == ["Q1", "Q2", "Q3", "Q3 cost", "Q4"]
    assert q.loc["Q1", "comparison"] == "lora - full" and q.loc["Q1", "stratum"] == "toy_30, λ=0"
    assert q.loc["Q1", "difference"] < 0 and q.loc["Q1", "answer"].startswith("yes")
    assert q.loc["Q2", "comparison"] == "toy_300 - toy_30" and q.loc["Q2", "answer"].startswith("yes")
    assert q.loc["Q3", "comparison"] == "λ=0.5 - λ=0" and q.loc["Q3", "answer"].startswith("yes")
    assert q.loc["Q3 cost", "difference"] == pytest.approx(-0.2, abs=0.01)
    assert q.loc["Q4", "answer"].startswith("yes")
    assert (q[["n_a", "n_b"]] == 3).all().all()
    # Flip the effect: the same code says "no".
    flipped = df.copy()
    flipped.loc[flipped["mode"] == "lora", "cross_div_clip"] += 1.0
    flipped.attrs = df.attrs
    assert report.questions_table(flipped).set_index("id").loc["Q1", "answer"].startswith("no")
    contrasts = report.contrasts_table(df)
    assert set(contrasts["id"]) == {"Q1", "Q2", "Q3", "Q3 cost", "Q4"}
    assert len(contrasts[contrasts["id"] == "Q1"]) == 4 * 3  # 4 strata (prompt set x lambda) x 3 reward levels


def test_questions_missing_from_a_grid_say_so(tmp_path):
    for seed in range(2):
        fake_cell(tmp_path, "lora", "toy_30", 0.0, seed)
    q = report.questions_table(report.load_grid_results(tmp_path)).set_index("id")
    assert q["answer"].str.startswith("not in this grid").all()


def test_write_summary_is_byte_identical_when_rerun(fake_grid):
    first = report.write_summary(fake_grid)
    names = {p.name for p in first.files}
    for fig in ("reward_curves", "diversity_curves", "frontier", "final_bars", "montage"):
        assert f"{fig}.png" in names and f"{fig}.pdf" in names
    for table in ("questions", "final", "matched_reward", "contrasts", "cells"):
        assert f"{table}.csv" in names and f"{table}.md" in names
    before = {p: p.read_bytes() for p in first.files}
    for p in first.files:
        p.unlink()  # really write them again
    second = report.write_summary(fake_grid)
    assert [p for p in second.files if p.read_bytes() != before[p]] == []
    md = (fake_grid / "summary" / "questions.md").read_text()
    assert md.startswith("| id | question |") and "Q1" in md


def test_cell_figures_and_table(tmp_path):
    cell = fake_cell(tmp_path, "progressive", "toy_30", 0.0, 0)
    figs = report.cell_figures(cell)
    assert set(figs) == {"curves", "ppo", "images"}
    assert report.eval_epochs(cell) == [0, 2, 4]
    table = report.cell_table(cell).set_index("metric")
    assert table.loc["param_dist", "epoch 4"] == pytest.approx(0.4)
    assert table.loc["reward_mean", "base (epoch 0)"] == 1.0
    diff = report.config_diff(DDPOConfig(mode="full", seed=3))
    assert set(diff["key"]) == {"mode", "seed"}
    jpeg = report.as_jpeg(figs["images"])
    assert jpeg.data[:2] == b"\xff\xd8" and jpeg.format == "jpeg"


def test_paired_reward_gain_equals_a_hand_computation(tmp_path):
    cell = tmp_path / "cell"
    (cell / "eval").mkdir(parents=True)
    imgs = np.zeros((2, 2, 4, 4, 3), dtype=np.uint8)
    for epoch, rewards in ((0, [[1, 2], [3, 4]]), (5, [[2, 2], [5, 5]])):
        np.savez_compressed(cell / "eval" / f"epoch_{epoch:04d}.npz", images=imgs, prompts=np.array(["a", "b"]),
                            rewards=np.array(rewards, dtype=np.float64))
    got = report.paired_reward_gain(cell)
    # differences 1, 0, 2, 1: mean 1, sample sd sqrt(2/3), se sqrt(2/3) / 2
    assert got["epoch"] == 5 and got["n_images"] == 4
    assert got["reward_0"] == 2.5 and got["reward_end"] == 3.5 and got["gain"] == 1.0
    assert got["gain_se"] == pytest.approx(math.sqrt(2 / 3) / 2)
    assert got["z"] == pytest.approx(2 / math.sqrt(2 / 3))
    np.savez_compressed(cell / "eval" / "epoch_0005.npz", images=imgs, prompts=np.array(["a", "b"]))
    assert math.isnan(report.paired_reward_gain(cell)["z"])  # older runs without per-image rewards


def test_learning_table_flags_runs_that_gained_more_than_three_standard_errors(fake_grid):
    table = report.learning_table(report.load_grid_results(fake_grid))
    assert len(table) == 36 and table["learned"].all()  # every fake run gains >= 0.4 with noise 0.05
    assert (table["epoch"] == 4).all() and (table["n_images"] == 8).all()


def test_keys_a_mode_never_reads_do_not_split_conditions(tmp_path):
    a = fake_cell(tmp_path, "lora", seed=0)
    b = fake_cell(tmp_path, "full", seed=0)
    for cell, lr in ((a, 1e-4), (b, 3e-5)):  # the LoRA run recorded another (unused) full learning rate
        cfg = json.loads((cell / "config.json").read_text())
        cfg["full_learning_rate"] = lr
        (cell / "config.json").write_text(json.dumps(cfg))
    df = report.load_grid_results(tmp_path)
    assert report.condition_factors(df) == ["mode"]
    assert set(df["condition"]) == {"lora", "full"}
