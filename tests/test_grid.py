"""The grid runner end to end through papermill on the tiny model: reports, a failing cell, resume, summary.

One module fixture runs a two-cell, one-epoch grid twice (that is the slow part, ~1 min on 2 busy cores):
first with one cell whose prompt file does not exist yet (it fails inside the notebook while the other cell
completes), then again after the file is created (the done cell is skipped, the failed one re-runs), with
the summary notebook at the end. The tests read what those runs left behind.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ddpo_study import cli, grid, report
from ddpo_study.config import UNUSED_BY_MODE, DDPOConfig
from ddpo_study.finetune import ADAPTER_NAME
from tests.test_train import tiny_config

CONFIG_KEYS = {f.name for f in dataclasses.fields(DDPOConfig)}
REPO = Path(__file__).resolve().parents[1]
OK, BROKEN = "ok-s0", "later-s0"


def tiny_spec(tmp: Path, model_dir, train_file: str, eval_file: str, late_file: str, **extra) -> dict:
    values = tiny_config(model_dir, (train_file, eval_file), tmp / "unused", num_epochs=1).to_dict()
    fixed = {k: v for k, v in values.items() if k not in ("output_dir", "prompt_set", "seed")}
    return {
        "name": "tiny", "notebook": "notebooks/cell.ipynb", "output_root": str(tmp / "results"),
        "cell_name": "{variant}-s{seed}", "fixed": fixed, "axes": {"seed": [0]},
        "variants": [{"variant": "ok", "prompt_set": train_file}, {"variant": "later", "prompt_set": late_file}],
        **extra,
    }


@pytest.fixture(scope="module")
def grid_runs(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("grid")
    train_file, eval_file, late_file = tmp / "train.txt", tmp / "eval.txt", tmp / "later.txt"
    from tests.conftest import TINY_PROMPTS

    train_file.write_text("\n".join(TINY_PROMPTS[:4]) + "\n")
    eval_file.write_text("\n".join(TINY_PROMPTS[2:]) + "\n")
    spec_file = tmp / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(tiny_spec(tmp, tiny_model_dir, str(train_file), str(eval_file),
                                                  str(late_file))))
    root = tmp / "results"

    # Run 1: two cells in parallel; "later" fails (its prompt file is missing) inside the notebook.
    rc1 = cli.main(["grid", "run", str(spec_file), "--jobs", "2", "--no-summary"])
    first = {"rc": rc1, "status_broken": grid.read_status(root / BROKEN),
             "html_mtime": (root / OK / "report.html").stat().st_mtime_ns,
             "ipynb_mtime": (root / OK / "report.ipynb").stat().st_mtime_ns,
             "table": grid.status(str(spec_file))}
    # Fix the failing cell; run 2 skips the done cell, re-runs the fixed one, then writes the summary.
    late_file.write_text("\n".join(TINY_PROMPTS[1:5]) + "\n")
    rc2 = cli.main(["grid", "run", str(spec_file)])
    return {"spec": spec_file, "root": root, "first": first, "rc2": rc2}


def test_cells_run_through_papermill_and_leave_code_free_reports(grid_runs):
    cell = grid_runs["root"] / OK
    for name in ("report.ipynb", "report.html", "metrics.csv", "config.json", "DONE", "eval/epoch_0001.npz"):
        assert (cell / name).is_file(), name
    assert pd.read_csv(cell / "metrics.csv")["epoch"].tolist() == [0, 1]
    status = json.loads((cell / "status.json").read_text())
    assert status["state"] == "done" and status["seconds"] > 0 and status["error"] is None
    assert status["started"] <= status["finished"]
    html = (cell / "report.html").read_text()
    assert "<img" in html and "data:image/jpeg" in html  # the figures are there (eval images as JPEG)
    # nbconvert's theme CSS lives once per grid, linked by every report and the summary
    css = re.findall(r'<link rel="stylesheet" href="\.\./(report-style-[0-9a-f]{12}\.css)">', html)
    assert len(css) == 1 and '<style type="text/css">' not in html.split("<body")[0]
    assert len((grid_runs["root"] / css[0]).read_text()) > 50_000
    assert f"../{css[0]}" in (grid_runs["root"] / "summary" / "summary.html").read_text()
    ignored = [line for line in (cell / ".gitignore").read_text().splitlines() if not line.startswith("#")]
    assert ignored == ["report.ipynb", "checkpoints/", "eval/epoch_*", "!eval/epoch_0000.rewards.npz",
                       "!eval/epoch_0001.rewards.npz", "!eval/epoch_0000.link.json", "!eval/epoch_0001.npz",
                       "final/transformer/", "final/unet/"]  # the eval rewards of epochs 0 and 1 (the last), the
    # images of 1 kept, no full weights (a UNet's or an SD3 transformer's)
    # the base model's images: one copy per grid, linked from each cell
    assert len(list((grid_runs["root"] / "base_eval").glob("*.npz"))) == 1
    assert (cell / "eval" / "epoch_0000.link.json").is_file()
    assert (cell / "eval" / "epoch_0001.rewards.npz").is_file()  # written by the run itself
    for code in ("train.run(cfg", "DDPOConfig.from_dict", "report.cell_figures", "import warnings"):
        assert code not in html, code  # ... the code is not
    assert 'data-mime-type="application/vnd.jupyter.stderr"' not in html  # no tqdm bar in a red stderr box
    nb = json.loads((cell / "report.ipynb").read_text())
    injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert injected and '"num_threads": 1' in "".join(injected[0]["source"])  # the config, one parameter
    assert json.loads((cell / "config.json").read_text())["output_dir"].endswith(OK)


def test_a_failing_cell_is_recorded_while_the_other_completes(grid_runs):
    first = grid_runs["first"]
    assert first["rc"] == 1  # the CLI exits non-zero
    st = first["status_broken"]
    assert st["state"] == "failed" and "later.txt" in st["error"] and "PromptSetError" in st["error"]
    table = first["table"].set_index("cell")
    assert table.loc[OK, "state"] == "done" and table.loc[BROKEN, "state"] == "failed"
    assert table.loc[OK, "epochs_done"] == 1 and table.loc[OK, "epochs_total"] == 1
    assert "PromptSetError" in table.loc[BROKEN, "error"]
    assert (grid_runs["root"] / BROKEN / "report.ipynb").is_file()  # the partial notebook is kept


def test_rerun_skips_done_cells_and_reruns_the_fixed_one(grid_runs):
    root, first = grid_runs["root"], grid_runs["first"]
    assert grid_runs["rc2"] == 0
    assert (root / OK / "report.html").stat().st_mtime_ns == first["html_mtime"]
    assert (root / OK / "report.ipynb").stat().st_mtime_ns == first["ipynb_mtime"]
    st = grid.read_status(root / BROKEN)
    assert st["state"] == "done" and st["attempt"] == 2
    assert st["cpu"] == grid.runner.cpu_model() and st["cpu"] not in ("", None)  # which CPU ran the cell
    assert (root / BROKEN / "report.html").is_file()
    assert set(grid.status(str(grid_runs["spec"]))["state"]) == {"done"}


def test_summary_writes_figures_and_rerunning_gives_identical_bytes(grid_runs):
    out = grid_runs["root"] / "summary"
    names = ["reward_curves", "diversity_curves", "frontier", "final_bars"]
    for name in names:
        assert (out / f"{name}.png").is_file() and (out / f"{name}.pdf").is_file(), name
    assert (out / "montage.png").is_file() and not (out / "montage.pdf").exists()
    for name in ("questions", "final", "matched_reward", "cells"):
        assert (out / f"{name}.csv").is_file() and (out / f"{name}.md").is_file(), name
    assert (out / "summary.html").is_file() and (out / "summary.ipynb").is_file()
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".png", ".pdf", ".csv", ".md")}
    report.write_summary(grid_runs["root"])  # this process, not the notebook's kernel: same bytes
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".png", ".pdf", ".csv", ".md")}
    assert before.keys() == after.keys()
    changed = [name for name in before if before[name] != after[name]]
    assert not changed
    cells = pd.read_csv(out / "cells.csv")
    assert sorted(cells["cell"]) == sorted([OK, BROKEN]) and cells["done"].all()


def test_diagnose_reloads_the_lora_and_reproduces_the_cells_saved_eval_images(grid_runs, one_thread):
    from ddpo_study import diagnose

    dx = diagnose.prepare(None, grid_runs["root"] / OK, num_prompts=2, num_seeds=1, device="cpu")
    assert dx.tuned.adapter == ADAPTER_NAME and dx.tuned.epoch == 1
    check = diagnose.reproduction_check(dx, max_prompts=2).set_index("model")
    assert list(check["verdict"]) == ["match", "match"], check
    sweep = diagnose.scale_sweep(dx, [0.0, 1.0])
    assert len(sweep) == 2 and dx.images["scale/0"].shape == (2, 1, 16, 16, 3)
    assert (dx.images["scale/0"] == dx.base("shared")).all()  # LoRA scale 0 is the base model


def test_unknown_keys_and_bad_values_fail_before_anything_runs(tmp_path, tiny_model_dir):
    files = [str(tmp_path / n) for n in ("t.txt", "e.txt", "l.txt")]
    spec = tiny_spec(tmp_path, tiny_model_dir, *files)
    spec["fixed"]["num_epoch"] = 3
    with pytest.raises(grid.GridError, match=r"fixed: 'num_epoch' is not a DDPOConfig field.*did you mean 'num_epochs'"):
        grid.run_grid(spec)
    assert not (tmp_path / "results").exists()
    spec = tiny_spec(tmp_path, tiny_model_dir, *files, quick={"lora_rnk": 3})
    with pytest.raises(grid.GridError, match="quick: 'lora_rnk'"):
        grid.run_grid(spec, quick=True)
    spec = tiny_spec(tmp_path, tiny_model_dir, *files)
    spec["variants"][1]["guidance_scale"] = 0.5
    with pytest.raises(grid.GridError, match=r"cell #1 .*variant 'later'.*guidance_scale=0.5"):
        grid.run_grid(spec)
    spec = tiny_spec(tmp_path, tiny_model_dir, *files, cell_name="s{seed}")
    with pytest.raises(grid.GridError, match="both named 's0'"):
        grid.run_grid(spec)
    spec = tiny_spec(tmp_path, tiny_model_dir, *files)
    spec["fixed"]["output_dir"] = "x"
    with pytest.raises(grid.GridError, match="set by the grid runner"):
        grid.run_grid(spec)
    assert not (tmp_path / "results").exists()
    assert cli.main(["grid", "status", str(REPO / "configs" / "nope.yaml")]) == 2


def test_cells_order_quick_overrides_and_shards():
    spec = grid.load_spec(REPO / "configs" / "toy_study.yaml")
    cells = grid.expand(spec)
    axes = spec.axes
    full = len(axes["seed"]) * len(axes["prompt_set"]) * len(axes["mode"]) * len(axes["diversity_lambda"])
    assert len(cells) < full and [c.index for c in cells] == list(range(len(cells)))
    extra = [c.params for c in cells if c.params["seed"] >= 3]  # the extra seeds are Q1's conditions only
    assert extra and all(p["prompt_set"] == "toy_30" and p["diversity_lambda"] == 0 and p["mode"] in ("lora", "full")
                         for p in extra)
    first = cells[0].params
    assert cells[0].name == f"{first['prompt_set']}-{first['mode']}-lam{first['diversity_lambda']}-s{first['seed']}"
    last = list(axes)[-1]
    assert cells[1].params[last] != first[last]  # the last axis varies fastest
    # the study runs its primary question's cells first: Q1's twelve (toy_30, no penalty, LoRA and full)
    q1 = [(c.params["prompt_set"], c.params["diversity_lambda"], c.params["mode"]) for c in cells[:12]]
    assert set(q1) == {("toy_30", 0.0, "lora"), ("toy_30", 0.0, "full")}
    assert cells[0].params["output_dir"] == f"results/toy_study/{cells[0].name}"
    quick = grid.expand(grid.load_spec(REPO / "configs" / "toy_study.yaml", quick=True))
    assert 0 < len(quick) < len(cells) and all("toy_study_quick" in c.params["output_dir"] for c in quick)
    shards = [grid.select_shard(cells, f"{i}/4") for i in range(4)]
    assert sorted(c.index for s in shards for c in s) == list(range(len(cells)))
    assert [c.index for c in shards[1]] == list(range(1, len(cells), 4))
    with pytest.raises(grid.GridError, match="i/n"):
        grid.select_shard(cells, "1of4")
    hyp_spec = grid.load_spec(REPO / "configs" / "toy_hypotheses.yaml")
    hyp = grid.expand(hyp_spec)
    assert len(hyp) == len(hyp_spec.axes["seed"]) * len(hyp_spec.variants) - 9  # seed 3 of 9 variants excluded
    rank64 = next(c for c in hyp if c.variant == "lora-rank64")
    assert rank64.params["lora_rank"] == 64 and rank64.name == f"lora-rank64-s{rank64.params['seed']}"


def test_runner_logic_with_a_stub_notebook_executor(tmp_path, tiny_model_dir, monkeypatch):
    """Threads per cell, skipping, stale 'running' entries, --shard and --match, without starting kernels."""
    import nbformat

    calls = []

    def fake_execute(notebook, output, parameters, num_threads):
        parameters = parameters["config"]  # the cell notebook's one parameter
        calls.append(dict(parameters))
        out = REPO / parameters["output_dir"] if not Path(parameters["output_dir"]).is_absolute() \
            else Path(parameters["output_dir"])
        (out / "DONE").write_text(json.dumps({"epochs": parameters["num_epochs"]}))
        (out / "metrics.csv").write_text(f"epoch\n0\n{parameters['num_epochs']}\n")
        nbformat.write(nbformat.v4.new_notebook(), str(output))

    monkeypatch.setattr(grid.runner, "execute_notebook", fake_execute)  # where run_cell looks it up
    files = [str(tmp_path / n) for n in ("t.txt", "e.txt", "l.txt")]
    spec = tiny_spec(tmp_path, tiny_model_dir, *files, axes={"seed": [0, 1]})
    del spec["fixed"]["num_threads"]
    result = grid.run_grid(spec, shard="1/4", echo=None)
    assert [c.name for c in result.cells] == ["later-s0"] and len(calls) == 1
    assert calls[0]["num_threads"] == max(1, grid.cpu_count())
    result = grid.run_grid(spec, match="ok-*", echo=None)  # a subset by name, in grid order
    assert [c.name for c in result.cells] == ["ok-s0", "ok-s1"] and len(calls) == 3
    with pytest.raises(grid.GridError, match="'okk-\\*' matches no cell"):
        grid.run_grid(spec, match="ok-s0,okk-*", echo=None)  # a typo runs nothing
    assert len(calls) == 3
    result = grid.run_grid(spec, jobs=1, echo=None)
    assert result.ok and len(calls) == 4  # the done cells were skipped
    assert result.states == {"ok-s0": "skipped", "later-s0": "skipped", "ok-s1": "skipped", "later-s1": "done"}
    # A cell marked running by a process that is gone is "interrupted" and runs again.
    cell_dir = tmp_path / "results" / "ok-s1"
    (cell_dir / "DONE").unlink()
    (cell_dir / "status.json").write_text(json.dumps({"state": "running", "pid": 2**22 + 12345,
                                                      "host": __import__("socket").gethostname()}))
    assert grid.status(spec).set_index("cell").loc["ok-s1", "state"] == "interrupted"
    grid.run_grid(spec, echo=None)
    assert len(calls) == 5 and grid.read_status(cell_dir)["state"] == "done"


def test_grid_stop_finishes_the_running_cell_and_starts_no_more(tmp_path, tiny_model_dir, monkeypatch):
    """``grid stop`` during a cell: that cell finishes, no other starts, no summary; the next run goes on."""
    import nbformat

    calls = []

    def fake_execute(notebook, output, parameters, num_threads):
        parameters = parameters["config"]
        calls.append(parameters["output_dir"])
        if len(calls) == 1:
            grid.request_stop(spec)  # the user asks for a stop while the first cell runs
        out = Path(parameters["output_dir"])  # absolute: tiny_spec roots the grid in tmp_path
        (out / "DONE").write_text(json.dumps({"epochs": parameters["num_epochs"]}))
        (out / "metrics.csv").write_text(f"epoch\n0\n{parameters['num_epochs']}\n")
        nbformat.write(nbformat.v4.new_notebook(), str(output))

    monkeypatch.setattr(grid.runner, "execute_notebook", fake_execute)
    files = [str(tmp_path / n) for n in ("t.txt", "e.txt", "l.txt")]
    spec = tiny_spec(tmp_path, tiny_model_dir, *files, axes={"seed": [0, 1]})
    result = grid.run_grid(spec, jobs=1, summarize=report.run_summary, echo=None)
    assert len(calls) == 1 and result.states["ok-s0"] == "done"
    assert result.not_started == ["later-s0", "ok-s1", "later-s1"] and result.summary_dir is None
    assert (tmp_path / "results" / grid.STOP_FILE).is_file()
    # A worker process sees the same request before it starts its cell.
    cell = next(c for c in grid.expand(grid.load_spec(spec)) if c.name == "ok-s1")
    assert grid.runner._run_cell_worker((str(REPO / "notebooks" / "cell.ipynb"), cell, 1, None))["state"] \
        == "not started"
    result = grid.run_grid(spec, jobs=1, echo=None)  # running again removes the request
    assert not (tmp_path / "results" / grid.STOP_FILE).exists()
    assert len(calls) == 4 and result.ok and not result.not_started


def test_cell_write_config_gives_the_cells_training_config_for_accelerate_launch(tmp_path):
    from ddpo_study.config import load_config

    path = tmp_path / "cell.json"
    assert cli.main(["cell", str(REPO / "configs" / "toy_study.yaml"), "toy_300-full-lam10.0-s2",
                     "--write-config", str(path)]) == 0
    cfg = load_config(path)
    assert (cfg.mode, cfg.prompt_set, cfg.diversity_lambda, cfg.seed) == ("full", "toy_300", 10.0, 2)
    assert cfg.output_dir == "results/toy_study/toy_300-full-lam10.0-s2"


def test_cells_trained_from_grid_configs_are_only_rendered_by_grid_run(tmp_path, tiny_model_dir):
    """`grid configs` -> `train` elsewhere (no Jupyter) -> `grid run` renders the report without retraining."""
    from tests.conftest import TINY_PROMPTS

    files = [tmp_path / n for n in ("t.txt", "e.txt", "l.txt")]
    files[0].write_text("\n".join(TINY_PROMPTS[:4]) + "\n")
    files[1].write_text("\n".join(TINY_PROMPTS[2:]) + "\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec(tmp_path, tiny_model_dir, *map(str, files))))
    assert cli.main(["grid", "configs", str(spec), str(tmp_path / "cfgs")]) == 0
    assert sorted(p.name for p in (tmp_path / "cfgs").iterdir()) == [f"{BROKEN}.json", f"{OK}.json"]
    assert cli.main(["train", str(tmp_path / "cfgs" / f"{OK}.json")]) == 0
    cell_dir = tmp_path / "results" / OK
    trained = (cell_dir / "metrics.csv").read_bytes()
    # the trained cell is left out of a second batch of configs
    assert cli.main(["grid", "configs", str(spec), str(tmp_path / "cfgs2")]) == 0
    assert [p.name for p in (tmp_path / "cfgs2").iterdir()] == [f"{BROKEN}.json"]
    result = grid.run_grid(str(spec), only=[OK], echo=None)
    assert result.ok and (cell_dir / "report.html").is_file()
    assert (cell_dir / "metrics.csv").read_bytes() == trained  # rendered, not retrained


def test_sharing_the_theme_css_keeps_the_page_and_is_idempotent(tmp_path):
    page = ('<html><head><meta charset="utf-8">\n<style type="text/css">a{color:red}</style>\n<script>x()</script>'
            '<style type="text/css">b{color:blue}</style></head><body><style scoped="">td{}</style>hi</body></html>')
    shared = grid.share_theme_css(page, tmp_path)
    (name,) = [p.name for p in tmp_path.iterdir()]
    assert (tmp_path / name).read_text() == "a{color:red}\nb{color:blue}"
    assert shared == ('<html><head><meta charset="utf-8">\n<link rel="stylesheet" href="../' + name + '">\n'
                      '<script>x()</script></head><body><style scoped="">td{}</style>hi</body></html>')
    assert grid.share_theme_css(shared, tmp_path) == shared


def test_a_finished_cells_gitignore_keeps_the_base_and_final_evals(tmp_path):
    cell = tmp_path / "cell"
    (cell / "eval").mkdir(parents=True)
    # unfinished (running, interrupted): nothing of it is listed, checkpoints and partial metrics included
    (cell / "metrics.csv").write_text("epoch\n0\n")
    grid.runner.write_cell_gitignore(cell)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    partial = subprocess.run(["git", "-C", str(cell), "ls-files", "--others", "--exclude-standard"],
                             capture_output=True, text=True, check=True).stdout.split()
    assert partial == []
    (cell / "metrics.csv").unlink()
    (cell / "DONE").write_text(json.dumps({"epochs": 20}))
    rewards = {e: np.arange(6.0).reshape(3, 2) + e for e in (0, 5, 10, 20)}
    for e in (0, 5, 10, 20):  # images' npz as the runs write them (older runs: no rewards file beside them)
        np.savez_compressed(cell / "eval" / f"epoch_{e:04d}.npz", images=np.zeros((3, 2, 4, 4, 3), np.uint8),
                            prompts=np.array(["a", "b", "c"]), rewards=rewards[e])
        (cell / "eval" / f"epoch_{e:04d}.png").write_bytes(b"x")
    for part in ("lora/pytorch_lora_weights.safetensors", "unet/config.json", "transformer/config.json"):
        (cell / "final" / part).parent.mkdir(parents=True, exist_ok=True)
        (cell / "final" / part).write_text("x")
    from ddpo_study.rundir import ensure_rewards_file, load_eval_rewards

    for e in (0, 20):  # what the runner does for a finished cell before it writes the file
        ensure_rewards_file(cell, e)
    path = grid.runner.write_cell_gitignore(cell)
    text = path.read_text()
    # a clone without the intermediate evals writes the same file (git status stays clean)
    for e in (5, 10):
        for ext in ("npz", "png"):
            (cell / "eval" / f"epoch_{e:04d}.{ext}").unlink()
    assert grid.runner.write_cell_gitignore(cell).read_text() == text
    for e in (5, 10):
        (cell / "eval" / f"epoch_{e:04d}.npz").write_bytes(b"x")
    if subprocess.run(["git", "--version"], capture_output=True).returncode == 0:  # what git makes of it
        subprocess.run(["git", "init", "-q", str(cell)], check=True)
        (cell / "report.ipynb").write_text("{}")

        def listed():
            return sorted(subprocess.run(["git", "-C", str(cell), "ls-files", "--others", "--exclude-standard"],
                                         capture_output=True, text=True, check=True).stdout.split())

        (cell / "report.html").write_text("<html>")
        assert listed() == [".gitignore", "DONE", "eval/epoch_0000.rewards.npz",
                            "eval/epoch_0020.npz", "eval/epoch_0020.rewards.npz",
                            "final/lora/pytorch_lora_weights.safetensors", "report.html"]
        grid.runner.write_cell_gitignore(cell, keep_unet=True, keep_report=False, keep_eval=False)
        assert {"final/unet/config.json", "final/transformer/config.json"} <= set(listed())  # full weights kept
        assert "report.html" not in listed()
        assert [f for f in listed() if f.startswith("eval/")] == ["eval/epoch_0000.rewards.npz",
                                                                  "eval/epoch_0020.rewards.npz"]
        grid.runner.write_cell_gitignore(cell, keep_lora=False)
        assert not [f for f in listed() if f.startswith("final/")] and "eval/epoch_0020.npz" in listed()
    # the rewards files were written from the images' npz, and the report reads the same rewards from either
    from ddpo_study.report.tables import paired_reward_gain

    both = paired_reward_gain(cell)
    for e in (0, 20):
        assert np.array_equal(load_eval_rewards(cell, e), rewards[e])
        (cell / "eval" / f"epoch_{e:04d}.npz").unlink()  # a clone of a cell without kept images
    assert np.array_equal(load_eval_rewards(cell, 20), rewards[20])
    assert paired_reward_gain(cell) == both and both["gain"] == pytest.approx(20.0)


def test_exclude_drops_axis_combinations_and_keep_unet_marks_cells():
    spec = grid.load_spec(questions_spec(None, exclude=[{"seed": [1, 2], "prompt_set": "toy_300"}],
                                         keep_unet={"seed": 0, "mode": "full"}, keep_report={"seed": 0})
                          | {"questions": [], "keep_eval": {"seed": 0, "mode": "lora"}, "keep_lora": {"seed": 1}})
    cells = grid.expand(spec)
    assert {c.params["seed"] for c in cells if c.keep_report} == {0} and any(not c.keep_report for c in cells)
    assert {(c.params["seed"], c.params["mode"]) for c in cells if c.keep_eval} == {(0, "lora")}
    assert {c.params["seed"] for c in cells if c.keep_lora} == {1}
    combos = {(c.params["seed"], c.params["prompt_set"], c.params["mode"]) for c in cells}
    assert len(cells) == 12 - 4 and (1, "toy_300", "lora") not in combos and (0, "toy_300", "full") in combos
    assert [c.name for c in cells if c.keep_unet] == ["0-toy_30-full", "0-toy_300-full"]
    with pytest.raises(grid.GridError, match="'exclude': 'seeds' is not an axis"):
        grid.load_spec(questions_spec([], exclude=[{"seeds": 1}]))
    with pytest.raises(grid.GridError, match="keep_unet"):
        grid.load_spec(questions_spec([], keep_unet={"mode": "ful"}))


def test_exclude_and_keep_may_name_variants():
    """A variant grid gives each variant its own seeds by excluding (seed, variant) pairs; keep_* select by name."""
    raw = {"name": "v", "notebook": "notebooks/cell.ipynb", "output_root": "results/v", "fixed": {"model": "toy"},
           "axes": {"seed": [0, 1, 2, 3]}, "variants": [{"variant": "base"}, {"variant": "rank8", "lora_rank": 8}]}
    spec = grid.load_spec(raw | {"exclude": [{"seed": 3, "variant": "rank8"}], "keep_report": {"variant": "base"}})
    cells = grid.expand(spec)
    assert [(c.params["seed"], c.variant) for c in cells] == [
        (0, "base"), (0, "rank8"), (1, "base"), (1, "rank8"), (2, "base"), (2, "rank8"), (3, "base")]
    assert [c.index for c in cells] == list(range(7))
    assert {c.variant for c in cells if c.keep_report} == {"base"}
    with pytest.raises(grid.GridError, match=r"'exclude': variant=\['rank9'\] is not a value"):
        grid.load_spec(raw | {"exclude": [{"variant": "rank9"}]})


# ----------------------------------------------------------------------------------------------- questions
def questions_spec(questions, **extra) -> dict:
    return {"name": "q", "notebook": "notebooks/cell.ipynb", "output_root": "results/q",
            "fixed": {"model": "toy"}, "axes": {"seed": [0, 1, 2], "prompt_set": ["toy_30", "toy_300"],
                                                "mode": ["lora", "full"]},
            "quick": {"seed": [0], "mode": "lora", "output_root": "results/q_quick"}, "questions": questions, **extra}


Q_OK = {"id": "Q1", "text": "LoRA vs full?", "a": {"mode": "lora"}, "b": {"mode": "full"},
        "where": {"prompt_set": "toy_30"}, "primary": True, "fractions": [0.5]}


def test_spec_questions_are_parsed_with_their_defaults():
    spec = grid.load_spec(questions_spec([Q_OK, {"id": "Q2", "text": "prompts?", "a": {"prompt_set": "toy_300"},
                                                 "b": {"prompt_set": "toy_30"}, "where": {"mode": "lora"},
                                                 "at": "final", "metrics": "judge_distinct"}]))
    q1, q2 = spec.questions
    assert (q1.id, q1.a, q1.b, q1.where, q1.at, q1.fractions, q1.primary, q1.min_seeds) == (
        "Q1", {"mode": "lora"}, {"mode": "full"}, {"prompt_set": "toy_30"}, "matched", (0.5,), True, 3)
    assert q1.metrics == ("cross_div_clip", "retrieval_acc", "judge_all", "judge_distinct")
    assert (q2.at, q2.metrics, q2.primary) == ("final", ("judge_distinct",), False)
    quick = grid.load_spec(questions_spec([Q_OK]), quick=True)  # validated against the full grid, kept
    assert quick.questions == spec.questions[:1]
    assert grid.load_spec(REPO / "configs" / "toy_long.yaml").questions is None  # a spec without the section
    hyp = grid.load_spec(REPO / "configs" / "toy_hypotheses.yaml").questions
    assert [q.id for q in hyp if q.primary] == ["M1", "M2", "M3"] and all(q.min_seeds >= 4 for q in hyp if q.primary)
    study = grid.load_spec(REPO / "configs" / "toy_study.yaml").questions  # the study pre-registers its own
    primary = [q for q in study if q.primary]
    assert primary and all(q.min_seeds >= 6 for q in primary)
    variants = grid.load_spec({"notebook": "notebooks/cell.ipynb", "output_root": "results/v", "axes": {"seed": [0]},
                               "variants": [{"variant": "base"}, {"variant": "rank64", "lora_rank": 64}],
                               "questions": [{"id": "V", "text": "rank?", "a": {"variant": "rank64"},
                                              "b": {"variant": "base"}}]})
    assert variants.questions[0].a == {"variant": "rank64"}


@pytest.mark.parametrize("change, message", [
    ({"a": {"mode": "lora"}, "b": {"mode": "ful"}}, r"question 'Q1': b: mode='ful' is not a value of axis 'mode'"),
    ({"metrics": ["cross_div_clip", "judge_distinc"]}, r"question 'Q1': unknown metric\(s\) \['judge_distinc'\]"),
    ({"a": {"lora_rank": 4}, "b": {"lora_rank": 8}}, r"'lora_rank' is not an axis of this grid"),
    ({"where": {}}, r"axis/axes \['prompt_set'\] have several values: set them in 'where'"),
    ({"b": {"mode": "lora"}}, r"'a' and 'b' are the same condition"),
    ({"b": {"prompt_set": "toy_300"}}, r"'a' and 'b' must name the same keys"),
    ({"a": {"seed": 0}, "b": {"seed": 1}}, r"'seed' is the replicate"),
    ({"at": "final"}, r"'fractions' is for at: matched only"),
    ({"at": "epoch 5"}, r"'at' must be one of \['matched', 'final'\]"),
    ({"fractions": [0, 0.5]}, r"'fractions' must be a non-empty list of numbers in \(0, 1\]"),
    ({"min_seeds": 6}, r"primary with min_seeds 6, but the grid has 3 seed\(s\)"),
    ({"primary": "yes"}, r"'primary' must be true or false"),
    ({"hypothesis": "x"}, r"unknown key\(s\) \['hypothesis'\]"),
    ({"text": ""}, r"needs a 'text'"),
    ({"where": {"prompt_set": "toy_30", "mode": "lora"}}, r"\['mode'\] both in 'a'/'b' and in 'where'"),
])
def test_a_bad_question_fails_with_one_clear_line(change, message):
    with pytest.raises(grid.GridError, match=message) as err:
        grid.load_spec(questions_spec([{**Q_OK, **change}]))
    assert "\n" not in str(err.value)


def test_question_list_errors():
    with pytest.raises(grid.GridError, match="'questions' must be a list"):
        grid.load_spec(questions_spec({"Q1": Q_OK}))
    with pytest.raises(grid.GridError, match="question 'Q1': duplicate id"):
        grid.load_spec(questions_spec([Q_OK, Q_OK]))
    with pytest.raises(grid.GridError, match="question #0: needs an 'id'"):
        grid.load_spec(questions_spec([{**Q_OK, "id": ""}]))


def test_find_spec_maps_a_results_folder_to_its_spec(tmp_path):
    from ddpo_study.grid.spec import find_spec

    (tmp_path / "q.yaml").write_text(yaml.safe_dump(questions_spec([Q_OK])))
    (tmp_path / "broken.yaml").write_text("a: [")
    spec = find_spec(REPO / "results" / "q", configs=tmp_path)
    assert spec.name == "q" and not spec.is_quick and spec.questions[0].id == "Q1"
    assert find_spec("results/q_quick", configs=tmp_path).is_quick
    assert find_spec(tmp_path / "elsewhere", configs=tmp_path) is None
    assert find_spec("results/toy_long").name == "toy_long"  # the repository's configs/


def test_every_grid_spec_in_configs_loads_and_the_derived_grids_match_the_study():
    """Each configs/*.yaml grid spec expands to valid cells; the grids that claim to re-use the study's recipe
    (toy_plateau's cells, toy_hypotheses' baseline) differ from the study's cells only where they say."""
    specs = {p.stem: grid.load_spec(p) for p in sorted((REPO / "configs").glob("*.yaml"))
             if "output_root" in (p.read_text())}
    cells = {name: grid.expand(spec) for name, spec in specs.items()}
    assert all(cells.values())
    study = {c.name: c.params for c in cells["toy_study"]}

    def differ(a: dict, b: dict) -> set[str]:  # as validated configs (defaults filled in); unread keys do not count
        a, b = (DDPOConfig.from_dict({k: v for k, v in p.items() if k in CONFIG_KEYS}).to_dict() for p in (a, b))
        unused = set(UNUSED_BY_MODE.get(a["mode"], ()))
        return {k for k in set(a) | set(b) if a.get(k) != b.get(k)} - {"output_dir"} - unused

    for c in cells["toy_plateau"]:
        ref = study[f"toy_30-{c.params['mode']}-lam0.0-s{c.params['seed']}"]
        assert differ(c.params, ref) == {"num_epochs"}, c.name
    plateau = {c.name: c.params for c in cells["toy_plateau"]}
    for c in cells["toy_plateau_more"]:  # a continuation: the same run's config, from its epoch-240 adapter
        assert differ(c.params, plateau[c.name]) == {"num_epochs", "init_lora"}, c.name
        assert c.params["init_lora"] == f"results/toy_plateau/{c.name}/final/lora"
    base = next(c for c in cells["toy_hypotheses"] if c.name == "lora-base-s1")
    assert differ(base.params, study["toy_30-lora-lam0.0-s1"]) == {"num_epochs"}
    for c in cells["study_v3"]:  # P2 replicates study v2's Q1 (and pools with its seeds 0-5): the same recipe
        if c.variant == "ddpo-unet":
            assert differ(c.params, study[f"toy_30-{c.params['mode']}-lam0.0-s0"]) == {"seed"}, c.name


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_the_committed_plateau_runs_start_as_the_study_cells_then_follow_their_own_path(mode):
    """toy_plateau's seed-0 runs are the study's seed-0 cells trained longer: the same config but for the epochs
    (and the progressive switch, unused by lora and full). On the machine that trained them their logged results
    agree with the study cell's to float noise for the first 20 epochs (observed: <= 1.1e-5 relative in rewards, diversity and
    param_dist, <= 2.2e-4 in the step KL);
    after that the two runs drift apart (docs/findings.md, "Agreement with the study's cells"), so later epochs are not compared."""
    root = REPO / f"results/toy_plateau/{mode}-s0"
    study_root = REPO / f"results/toy_study/toy_30-{mode}-lam0.0-s0"
    long, study = (json.loads((d / "config.json").read_text()) for d in (root, study_root))
    assert {k for k in long.keys() | study.keys() if long.get(k) != study.get(k)} == {
        "output_dir", "num_epochs", "progressive_switch_epoch"}
    assert (long["num_epochs"], study["num_epochs"]) == (240, 80)
    a = pd.read_csv(root / "metrics.csv").set_index("epoch")
    b = pd.read_csv(study_root / "metrics.csv").set_index("epoch")
    results = ["reward_mean", "cross_div_clip", "retrieval_acc", "judge_all", "param_dist", "train_step_kl",
               "train_lr", "train_reward_mean"]
    early = [e for e in b.index if e <= 20]
    pd.testing.assert_frame_equal(a.loc[early, results], b.loc[early, results], check_exact=False, rtol=1e-3,
                                  atol=1e-9)


def test_a_trained_cell_whose_report_is_not_kept_is_done_without_one(tmp_path):
    """A clone has only the committed reports: `grid run` must not re-render (and re-stamp) the other cells."""
    spec = grid.load_spec(questions_spec(None, keep_report={"seed": 0}) | {"questions": [],
                                                                           "output_root": str(tmp_path)})
    cells = {c.params["seed"]: c for c in grid.expand(spec) if c.params["mode"] == "lora"
             and c.params["prompt_set"] == "toy_30"}
    for c in cells.values():
        c.dir.mkdir(parents=True)
        (c.dir / "DONE").write_text(json.dumps({"epochs": c.num_epochs}))
        (c.dir / "metrics.csv").write_text(f"epoch\n0\n{c.num_epochs}\n")
    kept, other = cells[0], cells[1]
    assert not grid.is_done(kept) and grid.is_done(other)  # the kept report is missing; the other is not wanted
    assert not grid.is_done(other, need_report=True)  # asked for by name: rendered
    for bad in (False, {}, [0]):
        with pytest.raises(grid.GridError, match="'keep_eval' must map axes"):
            grid.load_spec(questions_spec(None, keep_eval=bad) | {"questions": []})
    (kept.dir / "report.html").write_text("<html>")
    assert grid.is_done(kept)


def test_frontier_remedies_names_a_folder_and_anything_else_is_one_clear_error(tmp_path):
    import yaml

    spec = grid.load_spec(REPO / "configs" / "toy_hypotheses.yaml")
    assert spec.frontier_remedies == REPO / "results" / "inference_remedies"
    assert grid.load_spec(REPO / "configs" / "toy_study.yaml").frontier_remedies is None
    data = yaml.safe_load((REPO / "configs" / "toy_hypotheses.yaml").read_text())
    with pytest.raises(grid.GridError, match="frontier_remedies .* must be a folder path"):
        grid.load_spec({**data, "frontier_remedies": ["results/inference_remedies"]})


def test_study_v3_spec_loads_with_its_primaries_paired_and_margined():
    spec = grid.load_spec(REPO / "configs" / "study_v3.yaml")
    cells = grid.expand(spec)
    assert len(cells) == 99 and len({c.name for c in cells}) == 99
    primary = [q for q in spec.questions if q.primary]
    assert [q.id for q in primary] == ["N1", "G1", "X1", "P2"]
    assert all(q.margins == {"judge_all": 0.10, "cross_div_clip": 0.03} and q.min_seeds >= 8 for q in primary)
    by_variant = {}
    for c in cells:
        by_variant.setdefault(c.variant, set()).add(c.params["seed"])
    assert all(by_variant[v] == set(range(6, 18)) for v in ("ddpo-unet", "nft-unet", "flow-grpo-fast"))
