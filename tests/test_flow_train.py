"""Flow-GRPO through the training loop's seam, on a tiny SD3 pipeline built from config: the same driver, eval,
checkpoints and exports as DDPO; final/lora read by stock ``StableDiffusion3Pipeline.load_lora_weights`` reproduces
the run's last eval images; a killed run resumes to the same numbers; bad input is one clear error."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from ddpo_study import train
from ddpo_study.config import ConfigError
from ddpo_study.models import ModelLoadError, load_pipeline
from ddpo_study.rundir import eval_file, load_eval_images
from tests.conftest import tiny_config

FLOW = dict(algorithm="flow_grpo", guidance_scale=2.0, num_steps=3, eval_num_steps=4, noise_level=0.7,
            target_kl=0.002, reward="jpeg_compressibility")


def flow_config(model_dir, prompt_files, out, **overrides):
    return tiny_config(model_dir, prompt_files, out, **{**FLOW, **overrides})


def test_a_flow_grpo_lora_run_trains_and_its_adapter_reproduces_its_eval_in_stock_diffusers(
        tiny_sd3_model_dir, tiny_prompt_files, tmp_path):
    cfg = flow_config(tiny_sd3_model_dir, tiny_prompt_files, tmp_path / "run")
    out = train.run(cfg, progress=False)
    df = pd.read_csv(out / "metrics.csv")
    assert df["epoch"].tolist() == [0, 1, 2]
    assert (df["train_optimizer_steps"].iloc[1:] == 2).all() and (df["train_step_kl"].iloc[1:] > 0).all()
    assert df["param_dist"].iloc[-1] > 0  # the adapter moved
    lora = out / "final" / "lora" / "pytorch_lora_weights.safetensors"
    assert lora.is_file() and not (out / "final" / "transformer").exists()

    pipe = load_pipeline(str(tiny_sd3_model_dir))
    pipe.load_lora_weights(str(lora.parent))  # the stock SD3 loader
    with np.load(eval_file(out, 2)) as saved:
        prompts = [str(p) for p in saved["prompts"]]
    seeds = [10_000 + j for j in range(cfg.eval_num_seeds)]
    images = []
    for p in prompts:
        images.append(pipe(prompt=[p] * len(seeds), num_inference_steps=4, guidance_scale=2.0, output_type="pt",
                           generator=[torch.Generator().manual_seed(s) for s in seeds], return_dict=False)[0])
    want = load_eval_images(out, 2)
    assert (torch.stack(images).float() - want).abs().max() <= 1 / 255 + 1e-6
    assert (want - load_eval_images(out, 0)).abs().max() > 0  # and the eval did change


def test_a_killed_flow_run_resumes_to_the_same_numbers(tiny_sd3_model_dir, tiny_prompt_files, tmp_path, monkeypatch):
    whole = train.run(flow_config(tiny_sd3_model_dir, tiny_prompt_files, tmp_path / "whole", mode="full",
                                  num_epochs=3), progress=False)
    real = train.train_epoch

    def crash_at_3(state, epoch):
        if epoch == 3:
            raise KeyboardInterrupt
        return real(state, epoch)

    monkeypatch.setattr(train, "train_epoch", crash_at_3)
    cfg = flow_config(tiny_sd3_model_dir, tiny_prompt_files, tmp_path / "killed", mode="full", num_epochs=3)
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg, progress=False)
    monkeypatch.setattr(train, "train_epoch", real)
    resumed = train.run(cfg, progress=False)
    a, b = (pd.read_csv(d / "metrics.csv") for d in (whole, resumed))
    same = [c for c in a.columns if not c.startswith("time_") and c != "cpu_epoch_s"]
    pd.testing.assert_frame_equal(a[same], b[same])
    assert json.loads((resumed / "final" / "transformer" / "config.json").read_text())["_class_name"] == \
        "SD3Transformer2DModel"


def test_bad_flow_input_is_one_clear_error(tiny_model_dir, tiny_sd3_model_dir, tiny_prompt_files, tmp_path):
    with pytest.raises(ValueError, match="'flow_grpo' trains an SD3-type .* this model is an SD-type"):
        train.run(flow_config(tiny_model_dir, tiny_prompt_files, tmp_path / "a"), progress=False)
    assert not (tmp_path / "a").exists()  # refused before anything was written
    with pytest.raises(ValueError, match="'ddpo' trains an SD-type .* this model is an SD3-type"):
        train.run(tiny_config(tiny_sd3_model_dir, tiny_prompt_files, tmp_path / "b"), progress=False)
    broken = tmp_path / "not-sd3"
    broken.mkdir()
    (broken / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    with pytest.raises(ModelLoadError, match="SD3 pipeline folder .* lacks the component folder"):
        load_pipeline(str(broken))
    with pytest.raises(ConfigError, match="noise_level"):
        flow_config(tiny_sd3_model_dir, tiny_prompt_files, tmp_path / "c", noise_level=0.0)


def test_flow_grpo_fast_trains_only_its_window(tiny_sd3_model_dir, tiny_prompt_files, tmp_path, monkeypatch):
    from ddpo_study.flow_sampler import FlowFamily, sde_window

    trained: list[set[int]] = []
    real = FlowFamily.log_probs

    def spy(self, denoiser, pipe, batch, step_index, reference=None):
        trained.append(set(step_index.reshape(-1).tolist()))
        return real(self, denoiser, pipe, batch, step_index, reference)

    monkeypatch.setattr(FlowFamily, "log_probs", spy)
    cfg = flow_config(tiny_sd3_model_dir, tiny_prompt_files, tmp_path / "fast", num_steps=4, sde_window=2,
                      timestep_fraction=1.0)
    out = train.run(cfg, progress=False)
    df = pd.read_csv(out / "metrics.csv")
    assert (df["train_optimizer_steps"].iloc[1:] == 2).all() and (df["train_step_kl"].iloc[1:] > 0).all()
    windows = [set(sde_window(cfg, e)) for e in (1, 2)]
    assert trained and all(any(steps <= w for w in windows) for steps in trained)  # never outside a window
    with pytest.raises(ConfigError, match="sde_window.*needs algorithm flow_grpo"):
        tiny_config(tiny_sd3_model_dir, tiny_prompt_files, tmp_path / "x", sde_window=2)
