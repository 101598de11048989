"""``ddpo_study.explore``: which weights ``load_cell`` reads (``final/``, else ``checkpoints/latest/``), and that a run
without them is an error naming what is missing, never the base model in disguise."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from ddpo_study import explore
from ddpo_study.checkpoint import save_full_unet, save_lora
from ddpo_study.finetune import ADAPTER_NAME, LORA_FILE, apply_lora, effective_state_dict
from ddpo_study.models import load_pipeline
from ddpo_study.rundir import MissingWeightsError

pytestmark = pytest.mark.usefixtures("module_one_thread")


def make_run(root, model_dir, mode="lora", done_epochs: int | None = 3):
    """A run folder's files without training: config.json, metrics.csv and (finished) DONE."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"mode": mode, "model": str(model_dir), "num_steps": 3,
                                                  "guidance_scale": 2.0, "eta": 1.0, "eval_prompt_set": "toy_eval"}))
    (root / "metrics.csv").write_text("epoch\n0\n")
    if done_epochs is not None:
        (root / "DONE").write_text(json.dumps({"epochs": done_epochs}) + "\n")
    return root


@pytest.fixture(scope="module")
def base_unet(tiny_model_dir):
    return load_pipeline(str(tiny_model_dir)).unet


def lora_unet(unet):
    tuned = copy.deepcopy(unet)
    apply_lora(tuned, 2, 4.0)
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if "lora_B" in name:
                p.fill_(0.1)
    return tuned


@pytest.mark.parametrize("mode, missing", [
    ("lora", ["final/lora/pytorch_lora_weights.safetensors"]),
    ("full", ["final/unet/config.json"]),
    ("progressive", ["final/lora/pytorch_lora_weights.safetensors", "final/unet/config.json"]),
])
def test_a_finished_run_without_weights_is_an_error_naming_them(tmp_path, tiny_model_dir, mode, missing):
    run = make_run(tmp_path / "run", tiny_model_dir, mode)
    with pytest.raises(MissingWeightsError, match=f"finished {mode} run") as err:
        explore.load_cell(run, device="cpu")
    for name in missing:
        assert str(run / name) in str(err.value)
    unfinished = make_run(tmp_path / "unfinished", tiny_model_dir, mode, done_epochs=None)
    with pytest.raises(MissingWeightsError, match="has no checkpoint yet"):
        explore.load_cell(unfinished, device="cpu")


def test_final_weights_are_loaded_and_checkpoints_are_the_fallback(tmp_path, tiny_model_dir, base_unet):
    tuned = lora_unet(base_unet)
    run = make_run(tmp_path / "lora-run", tiny_model_dir, "lora", done_epochs=3)
    ckpt = run / "checkpoints" / "latest"
    save_lora(tuned, ckpt / "lora")
    (ckpt / "state.json").write_text(json.dumps({"epoch": 3}))
    cell = explore.load_cell(run, device="cpu")  # no final/ yet: the run's latest checkpoint
    assert (cell.weights.source, cell.checkpoint_epoch, cell.adapter) == ("checkpoint", 3, ADAPTER_NAME)
    save_lora(tuned, run / "final" / "lora")
    cell = explore.load_cell(run, device="cpu")
    assert (cell.weights.source, cell.weights.lora) == ("final", run / "final" / "lora")
    got, want = effective_state_dict(cell.pipe.unet), effective_state_dict(tuned)
    assert max(float((got[k] - want[k]).abs().max()) for k in want) < 1e-6
    assert explore.default_prompts(cell, 2) == ["a large orange circle in the bottom left on a red background",
                                                "a small orange square at the bottom on a green background"]

    full = make_run(tmp_path / "full-run", tiny_model_dir, "full", done_epochs=2)
    moved = copy.deepcopy(base_unet)
    with torch.no_grad():
        next(moved.parameters()).add_(1.0)
    save_full_unet(moved, full / "final" / "unet", dtype=torch.float16)  # as runs keep it
    cell = explore.load_cell(full, device="cpu")
    assert cell.adapter is None and cell.checkpoint_epoch == 2
    assert next(cell.pipe.unet.parameters()).dtype == torch.float32  # fp16 file, computed in the base's dtype
    assert not torch.equal(next(cell.pipe.unet.parameters()), next(cell.base_unet.parameters()))


COMMITTED = Path(__file__).resolve().parents[1] / "results" / "toy_study" / "toy_30-lora-lam0.0-s0"


@pytest.mark.skipif(not (COMMITTED / "final" / "lora" / LORA_FILE).is_file(),
                    reason="the committed study cell keeps no final/lora adapter yet")
def test_the_committed_lora_cell_loads_and_reproduces_its_saved_eval_images():
    """explore.ipynb's default: a fresh clone's committed LoRA cell, its final epoch, images as evaluated."""
    cell = explore.load_cell(COMMITTED, device="cpu")
    assert cell.weights.source == "final" and cell.checkpoint_epoch == json.loads((COMMITTED / "DONE").read_text())["epochs"]
    check = explore.reproduction_check(cell, max_prompts=2).set_index("model")
    assert list(check["verdict"]) == ["match", "match"], check


@pytest.mark.skipif(not (COMMITTED / "final" / "lora" / LORA_FILE).is_file(),
                    reason="the committed study cell keeps no final/lora adapter yet")
def test_a_cell_committed_without_eval_images_says_so(tmp_path):
    """A grid commits eval images for some cells only (keep_eval): the check says why there is nothing to compare."""
    import shutil

    cell_dir = tmp_path / COMMITTED.name
    cell_dir.mkdir()
    for name in ("config.json", "metrics.csv", "DONE"):
        shutil.copy(COMMITTED / name, cell_dir / name)
    shutil.copytree(COMMITTED / "final" / "lora", cell_dir / "final" / "lora")
    check = explore.reproduction_check(explore.load_cell(cell_dir, device="cpu"))
    assert len(check) == 1 and "keep_eval" in check["verdict"].iloc[0]
