"""The ``demo`` and ``base-eval`` commands on the tiny model of tests/conftest.py (16 px images)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from ddpo_study import cli
from ddpo_study.images import to_uint8
from ddpo_study.models import load_pipeline
from ddpo_study.prompts import load_prompts
from ddpo_study.sampler import sample_trajectories
from ddpo_study.toy import evaluate

pytestmark = pytest.mark.usefixtures("module_one_thread")

GRAMMAR_PROMPTS = [
    "a small red circle in the center on a black background",
    "a large blue square on the left on a white background",
]


def test_demo_writes_a_seeds_by_prompts_grid_of_the_models_samples(tiny_model_dir, tmp_path):
    out = tmp_path / "demo"
    argv = ["demo", "--model", str(tiny_model_dir), "--prompts", "3", "--seeds", "2", "--guidance", "2.0",
            "--out", str(out)]
    assert cli.main(argv) == 0
    prompts = load_prompts("toy_eval")[:3]
    assert (out / "demo_prompts.txt").read_text().splitlines() == prompts
    grid = np.asarray(Image.open(out / "demo_grid.png").convert("RGB"))
    assert grid.shape == (2 * 16 * 3, 3 * 16 * 3, 3)  # rows: 2 seeds, columns: 3 prompts, each 16 px, upscaled 3x
    tiles = grid[::3, ::3]  # undo the nearest-neighbour 3x upscale
    pipe = load_pipeline(str(tiny_model_dir))
    for seed in range(2):
        for col, prompt in enumerate(prompts):
            alone = sample_trajectories(pipe, [prompt], [seed], num_inference_steps=20, guidance_scale=2.0, eta=1.0)
            expected = to_uint8(alone.images)[0].astype(int)
            tile = tiles[seed * 16:(seed + 1) * 16, col * 16:(col + 1) * 16].astype(int)
            assert np.abs(tile - expected).max() <= 1, (seed, prompt)
    assert np.abs(tiles[:16, :16].astype(int) - tiles[16:, :16]).max() > 0  # seeds differ

    # a grid that differs only by float noise (another machine) is kept; a different one is rewritten
    written = (out / "demo_grid.png").read_bytes()
    noisy = grid.copy()
    noisy[0, 0] = np.where(noisy[0, 0] < 255, noisy[0, 0] + 1, noisy[0, 0] - 1)
    Image.fromarray(noisy).save(out / "demo_grid.png")
    kept = (out / "demo_grid.png").read_bytes()
    assert cli.main(argv) == 0 and (out / "demo_grid.png").read_bytes() == kept
    Image.fromarray(255 - grid).save(out / "demo_grid.png")
    assert cli.main(argv) == 0 and (out / "demo_grid.png").read_bytes() == written


def test_base_eval_passes_model_and_guidances_and_writes_the_report(tiny_model_dir, tmp_path, monkeypatch, capsys):
    asked = []

    def few_prompts(name):
        asked.append(name)
        return GRAMMAR_PROMPTS

    monkeypatch.setattr(evaluate, "load_prompts", few_prompts)  # 2 eval prompts instead of 64 keep it fast
    out = tmp_path / "base_eval.json"
    assert cli.main(["base-eval", "--model", str(tiny_model_dir), "--guidance", "2.0", "4.0", "--steps", "6",
                     "--out", str(out)]) == 0
    assert asked == ["toy_eval"]
    report = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == report
    assert (report["n_prompts"], report["n_seeds"], report["steps"]) == (2, 4, 6)
    assert set(report["by_guidance"]) == {"2.0", "4.0"}

    direct = evaluate.evaluate(load_pipeline(str(tiny_model_dir)), GRAMMAR_PROMPTS, [4.0], n_seeds=4, steps=6)
    got, want = report["by_guidance"]["4.0"], direct["by_guidance"]["4.0"]
    assert got["judge_accuracy"] == pytest.approx(want["judge_accuracy"])
    assert got["within_prompt_rms"] == pytest.approx(want["within_prompt_rms"], rel=1e-5)
    assert got["within_prompt_rms"] != pytest.approx(report["by_guidance"]["2.0"]["within_prompt_rms"], rel=1e-3)


@pytest.mark.parametrize("settings, message", [
    ("prompt_set: no_such_set\n", "error: prompt set 'no_such_set'"),
    ("model: /no/such/model\n", "error: model path /no/such/model does not exist"),
    ("guidance_scale: 0.5\n", "error: guidance_scale=0.5: must be >= 1"),
    ("num_epoch: 3\n", "error: unknown config key(s): 'num_epoch' (did you mean 'num_epochs'?)"),
])
def test_a_bad_config_prints_one_error_line_and_creates_no_folder(tmp_path, capsys, settings, message):
    out = tmp_path / "run"
    config = tmp_path / "cfg.yaml"
    config.write_text(f"output_dir: {out}\nnum_epochs: 1\n{settings}")
    assert cli.main(["train", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err
    assert not out.exists()
