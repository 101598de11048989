"""Two CPU processes (torchrun) against one process: the same epoch, the same update."""

import subprocess
import sys

import pandas as pd
import torch
import yaml
from safetensors.torch import load_file

from ddpo_study import train
from tests.conftest import tiny_config


def test_two_cpu_processes_make_the_same_update_as_one(tiny_model_dir, tiny_prompt_files, tmp_path):
    # 8 samples, steps of 4 (train batch 2 x accumulation 2): each process holds a random share of each step.
    settings = dict(num_epochs=1, eval_every=1, train_batch_size=2, gradient_accumulation_steps=2)
    one = train.run(tiny_config(tiny_model_dir, tiny_prompt_files, tmp_path / "one", **settings), progress=False)
    cfg = tiny_config(tiny_model_dir, tiny_prompt_files, tmp_path / "two", **settings)
    spec = tmp_path / "cell.yaml"
    spec.write_text(yaml.safe_dump(cfg.to_dict()))
    # torchrun, not `accelerate launch --cpu`: the latter starts ONE process whatever --num_processes says (its
    # simple launcher); Accelerator(cpu=True) picks up torchrun's environment and runs on gloo.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "ddpo_study", "train", str(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "over 2 process(es), 2 optimizer step(s)/epoch of 4 samples" in proc.stdout + proc.stderr, proc.stdout

    a, b = pd.read_csv(one / "metrics.csv"), pd.read_csv(tmp_path / "two" / "metrics.csv")
    assert b["epoch"].tolist() == [0, 1] and b["train_samples"].iloc[1] == cfg.samples_per_epoch
    for col in ("train_reward_mean", "train_reward_std"):  # the same samples and rewards, gathered in order
        assert b[col].iloc[1] == a[col].iloc[1], col
    for col in ("train_loss", "train_grad_norm", "train_step_kl", "param_dist", "reward_mean", "cross_div_clip"):
        # train_loss is a mean of O(1) terms (advantage x ratio) that cancel to ~1e-3, and two processes sum them
        # in another order: float32 round-off of ~1e-7 per term, so its tolerance is absolute (seen: 1.15e-7).
        atol = 1e-6 if col == "train_loss" else 1e-7
        assert abs(b[col].iloc[1] - a[col].iloc[1]) <= 1e-5 * abs(a[col].iloc[1]) + atol, col
    # the trained adapter itself: the gradients of each step summed over the processes equal one process's
    wa = load_file(str(one / "final" / "lora" / "pytorch_lora_weights.safetensors"))
    wb = load_file(str(tmp_path / "two" / "final" / "lora" / "pytorch_lora_weights.safetensors"))
    assert wa.keys() == wb.keys()
    moved = max(float(w.abs().max()) for k, w in wa.items() if "lora_B" in k or "lora.up" in k)
    assert moved > 0
    for key in wa:
        # Adam divides by sqrt(v): on near-zero gradient entries float noise moves a weight by up to ~1e-3 of
        # the largest move; a wrong gradient (missing samples, a halved sum) moves weights by O(1) of it
        torch.testing.assert_close(wb[key], wa[key], rtol=1e-3, atol=5e-3 * moved)
