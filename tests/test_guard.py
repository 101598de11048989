"""The guard: the stop rule against epoch 0, by hand; and in the trainer, a run stops at the eval where it fires,
keeps the last passing eval's weights in final/ (they re-sample that eval's images), says so in DONE, status and
the summary, and is finished for a re-run. A run with the guard off is pinned by tests/test_train_golden.py."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ddpo_study import train
from ddpo_study.guard import StopRule
from ddpo_study.rundir import load_eval_images, read_stop
from tests.conftest import tiny_config

BASE = {"epoch": 0, "cross_div_clip": 0.40, "retrieval_acc": 0.90, "judge_all": 0.70}


def row(epoch, cross, retrieval, judge=math.nan):
    return {"epoch": epoch, "cross_div_clip": cross, "retrieval_acc": retrieval, "judge_all": judge}


def test_the_rule_by_hand_at_and_past_each_threshold():
    rule = StopRule(cross_prompt_ratio=0.95, retrieval_drop=0.10, judge_drop=0.10)
    assert rule.check(BASE, BASE).fired == ()
    at = rule.check(row(5, 0.38, 0.80 + 1e-6, 0.60 + 1e-6), BASE)  # 0.38 / 0.40 = 0.95: not below
    assert at.fired == () and at.cross_prompt_ratio == pytest.approx(0.95)
    past = rule.check(row(10, 0.3799, 0.80, 0.60), BASE)  # 0.9497 < 0.95; drops of exactly 0.10 count
    assert past.fired == ("cross_prompt", "retrieval", "judge")
    assert past.columns()["guard_fired"] == "cross_prompt+retrieval+judge"
    assert past.retrieval_drop == pytest.approx(0.10) and past.judge_drop == pytest.approx(0.10)
    assert "epoch 10: prompts being lost (cross_prompt, retrieval, judge) - cross-prompt 0.95 of epoch 0" in past.line()
    # outside the toy grammar there is no judge: that part never fires; judge_drop 0 switches it off
    assert rule.check(row(5, 0.40, 0.90), {**BASE, "judge_all": math.nan}).fired == ()
    assert StopRule(judge_drop=0.0).check(row(5, 0.40, 0.90, 0.0), BASE).fired == ()


def test_a_run_stops_where_the_guard_fires_and_keeps_the_last_passing_weights(tiny_model_dir, tiny_prompt_files,
                                                                             tmp_path):
    common = dict(num_epochs=5, lora_learning_rate=5e-2, stop_retrieval_drop=1.0, stop_judge_drop=0.0)
    free = pd.read_csv(train.run(tiny_config(tiny_model_dir, tiny_prompt_files, tmp_path / "free", **common),
                                 progress=False) / "metrics.csv")
    ratio = (free["cross_div_clip"] / free["cross_div_clip"].iloc[0]).to_numpy()
    # a threshold between the evals: the first epoch >= 2 whose ratio falls below every earlier one
    fire = next(e for e in range(2, len(ratio)) if ratio[e] < ratio[1:e].min())
    threshold = (ratio[fire] + ratio[1:fire].min()) / 2
    cfg = tiny_config(tiny_model_dir, tiny_prompt_files, tmp_path / "guarded", stop_when_prompts_lost=True,
                      stop_cross_prompt_ratio=float(threshold), **common)
    out = train.run(cfg, progress=False)
    got = pd.read_csv(out / "metrics.csv")
    assert got["epoch"].tolist() == list(range(fire + 1))  # trained to the firing eval, not past it
    assert got["guard_fired"].fillna("").tolist() == [""] * fire + ["cross_prompt"]
    same = [c for c in free.columns if not c.startswith("time_") and c != "cpu_epoch_s"]
    pd.testing.assert_frame_equal(got.loc[:fire, same], free.loc[:fire, same])  # the guard changes no update
    stop = read_stop(out)
    assert stop["planned"] == 5 and stop["epoch"] == fire and stop["kept_epoch"] == fire - 1
    assert stop["rules"] == ["cross_prompt"] and stop["values"]["guard_cross_ratio"] == pytest.approx(ratio[fire])

    # final/ holds the weights of the last passing eval: stock diffusers with final/lora re-samples its images
    from ddpo_study.models import load_pipeline
    from ddpo_study.rundir import eval_file
    from ddpo_study.sampler import DDIMFamily

    pipe = load_pipeline(cfg.model)
    pipe.load_lora_weights(str(out / "final" / "lora"))
    with np.load(eval_file(out, fire - 1)) as saved:
        prompts = [str(p) for p in saved["prompts"]]
    seeds = [10_000 + j for j in range(cfg.eval_num_seeds)]
    pairs = [(p, s) for p in prompts for s in seeds]
    images = DDIMFamily().generate(pipe, pipe.unet, [p for p, _ in pairs], [s for _, s in pairs], cfg)
    want = load_eval_images(out, fire - 1).reshape(images.shape)
    assert (images - want).abs().max() <= 1 / 255 + 1e-6
    assert (images - load_eval_images(out, fire).reshape(images.shape)).abs().max() > 2 / 255  # not the fired one

    # finished for a re-run (nothing retrains), and the summary marks it
    before = (out / "metrics.csv").read_bytes()
    train.run(cfg, progress=False)
    assert (out / "metrics.csv").read_bytes() == before
    from ddpo_study import report

    df = report.load_grid_results(tmp_path)
    table = report.cells_table(df).set_index("cell")
    assert table.loc["guarded", "stopped_at"] == fire and table.loc["guarded", "kept_epoch"] == fire - 1
    assert math.isnan(table.loc["free", "stopped_at"])


def test_guard_columns_only_when_the_guard_is_on(tiny_model_dir, tiny_prompt_files, tmp_path):
    out = train.run(tiny_config(tiny_model_dir, tiny_prompt_files, tmp_path / "off", num_epochs=1), progress=False)
    assert not any(c.startswith("guard_") for c in pd.read_csv(out / "metrics.csv").columns)
    assert read_stop(out) is None


def _guard_thresholds():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "guard_thresholds.py"
    spec = importlib.util.spec_from_file_location("guard_thresholds", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_guard_thresholds_reproduces_its_committed_files_and_reads_other_grids(tmp_path, capsys):
    """benchmarks/guard_thresholds.py re-reads the committed runs into the same bytes the docs cite; --runs reads
    another grid's finished runs with a table per condition, and a bad --runs is one clear line."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    gt = _guard_thresholds()
    assert gt.main(["--out", str(tmp_path / "v2")]) == 0
    for name in ("firing.csv", "README.md"):
        assert (tmp_path / "v2" / name).read_bytes() == (repo / "results" / "guard_thresholds" / name).read_bytes()
    assert gt.main(["--runs", "toy_plateau=*-s*", "--by-condition", "--out", str(tmp_path / "v3")]) == 0
    text = (tmp_path / "v3" / "README.md").read_text()
    assert "| toy_plateau | lora | 6 |" in text and "| toy_plateau | full | 6 |" in text
    with pytest.raises(SystemExit):
        gt.main(["--runs", "toy_plateau"])
    assert "--runs takes GRID=GLOB, got 'toy_plateau'" in capsys.readouterr().err
