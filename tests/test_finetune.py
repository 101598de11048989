"""Fine-tuning modes, the progressive switch, checkpoints and the weight-distance metric."""

from __future__ import annotations

import math

import pytest
import torch

from ddpo_study.checkpoint import load_full_unet, save_full_unet, save_lora
from ddpo_study.finetune import (
    apply_lora,
    check_target_modules,
    param_distance_from_base,
    prepare_unet,
    snapshot_base_state,
    switch_to_lora,
)
from ddpo_study.sampler import sample_trajectories

PROMPTS = ["a red circle", "a blue square"]
SEEDS = [5, 6]


def unet_out(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, emb = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 16, 16, generator=g)
    return unet(x, torch.tensor([801, 301]), encoder_hidden_states=emb).sample


def train_step(unet, params, lr=1e-2, steps=2):
    """A few Adam steps on an arbitrary loss: enough to move every trainable tensor (also LoRA's B from 0)."""
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        unet_out(unet).pow(2).mean().backward()
        opt.step()


def test_lora_mode_trains_exactly_the_lora_params_in_fp32(tiny_pipe):
    unet = tiny_pipe.unet.half()  # a half-precision base, as for SD on GPU
    params = prepare_unet(unet, "lora", lora_rank=2, lora_alpha=4.0)
    names = {n for n, p in unet.named_parameters() if p.requires_grad}
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    assert {id(p) for p in params} == {id(p) for p in unet.parameters() if p.requires_grad}
    assert all(p.dtype == torch.float32 for p in params)
    assert all(p.dtype == torch.float16 for n, p in unet.named_parameters() if "lora_" not in n)
    # Every targeted projection got an adapter: 4 per attention, in each attention of the tiny UNet.
    n_attn = sum(1 for n, _ in unet.named_modules() if n.endswith(".attn1") or n.endswith(".attn2"))
    assert len(params) == 2 * 4 * n_attn


def test_full_mode_trains_everything_in_fp32(tiny_pipe):
    unet = tiny_pipe.unet.half()
    params = prepare_unet(unet, "full")
    assert len(params) == len(list(unet.parameters()))
    assert all(p.requires_grad and p.dtype == torch.float32 for p in unet.parameters())
    with pytest.raises(ValueError):
        prepare_unet(unet, "adapters")


def test_progressive_switch_keeps_outputs_then_trains_only_lora(tiny_pipe, tiny_pipe_factory, tmp_path):
    unet = tiny_pipe.unet
    train_step(unet, prepare_unet(unet, "progressive"))  # the full-tuning phase
    full_tuned = {n: p.detach().clone() for n, p in unet.named_parameters()}
    with torch.no_grad():
        before = unet_out(unet)

    params = switch_to_lora(unet, rank=2, alpha=4.0)
    with torch.no_grad():
        torch.testing.assert_close(unet_out(unet), before, rtol=0, atol=1e-6)  # B = 0: no change
    assert {id(p) for p in params} == {id(p) for n, p in unet.named_parameters() if "lora_" in n}
    assert {id(p) for p in unet.parameters() if p.requires_grad} == {id(p) for p in params}

    train_step(unet, params)  # new optimizer over the LoRA only
    with torch.no_grad():
        after = unet_out(unet)
    assert (after - before).abs().max() > 1e-4
    for name, p in unet.named_parameters():  # the full-tuned base is frozen in place
        if "lora_" not in name:
            assert torch.equal(p, full_tuned[name.replace(".base_layer.", ".")])
    with pytest.raises(ValueError):
        switch_to_lora(unet, rank=2, alpha=4.0)

    # Checkpoint = full base (written without PEFT names) + LoRA; reloading reproduces the UNet.
    save_full_unet(unet, tmp_path / "unet")
    save_lora(unet, tmp_path / "lora")
    fresh = tiny_pipe_factory(0)
    fresh.unet = load_full_unet(tmp_path / "unet")
    with torch.no_grad():
        torch.testing.assert_close(unet_out(fresh.unet), before, rtol=0, atol=1e-6)  # the base alone
    fresh.load_lora_weights(str(tmp_path / "lora"))
    with torch.no_grad():
        torch.testing.assert_close(unet_out(fresh.unet), after, rtol=0, atol=1e-6)


def test_full_unet_round_trip(tiny_pipe, tmp_path):
    unet = tiny_pipe.unet
    train_step(unet, prepare_unet(unet, "full"))
    save_full_unet(unet, tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    with torch.no_grad():
        torch.testing.assert_close(unet_out(load_full_unet(tmp_path)), unet_out(unet), rtol=0, atol=0)


def test_lora_checkpoint_round_trip_with_stock_loader(tiny_pipe_factory, tmp_path):
    pipe = tiny_pipe_factory(0)
    # alpha != rank on purpose: the loader must get the scale alpha / r from the saved metadata.
    params = apply_lora(pipe.unet, rank=2, alpha=8.0)
    train_step(pipe.unet, params)
    expected = sample_trajectories(pipe, PROMPTS, SEEDS, num_inference_steps=3, guidance_scale=5.0).images
    save_lora(pipe, tmp_path)

    fresh = tiny_pipe_factory(0)
    base = sample_trajectories(fresh, PROMPTS, SEEDS, num_inference_steps=3, guidance_scale=5.0).images
    fresh.load_lora_weights(str(tmp_path))  # stock diffusers loader
    loaded = sample_trajectories(fresh, PROMPTS, SEEDS, num_inference_steps=3, guidance_scale=5.0).images
    torch.testing.assert_close(loaded, expected, rtol=0, atol=1e-5)
    assert (base - expected).abs().max() > 1e-3  # guard: the LoRA does change the images


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_param_distance_from_base(tiny_pipe, mode):
    unet = tiny_pipe.unet
    base = snapshot_base_state(unet)
    params = prepare_unet(unet, mode, lora_rank=2, lora_alpha=8.0)
    assert param_distance_from_base(unet, base) == 0.0  # LoRA B = 0 at init: effective weights unchanged
    train_step(unet, params)
    distance = param_distance_from_base(unet, base)
    assert distance > 0

    if mode == "lora":  # by hand: sqrt(sum over adapted layers of ||(alpha/r) B @ A||_F^2)
        total = 0.0
        for name, module in unet.named_modules():
            if hasattr(module, "lora_A"):
                delta = (8.0 / 2) * module.lora_B["default"].weight.detach() @ module.lora_A["default"].weight.detach()
                total += float(delta.double().pow(2).sum())
    else:  # by hand: the plain parameter difference
        total = sum(float((p.detach().double() - base[n].double()).pow(2).sum()) for n, p in unet.named_parameters())
    assert distance == pytest.approx(math.sqrt(total), rel=1e-5)


def test_lora_target_modules_choose_the_adapted_layers_and_unknown_ones_are_refused(tiny_pipe_factory):
    unet = tiny_pipe_factory().unet
    prepare_unet(unet, "lora", 2, 2.0, "attn2.to_k,attn2.to_v")  # cross-attention keys and values only
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in unet.named_parameters() if ".lora_A." in n}
    assert adapted and all(n.endswith(("attn2.to_k", "attn2.to_v")) for n in adapted)
    every = [n for n, _ in unet.named_modules() if n.endswith(("attn2.to_k", "attn2.to_v"))]
    assert sorted(adapted) == sorted(every)
    with pytest.raises(ValueError, match=r"\['attn3.to_k'\] match no module"):
        check_target_modules(tiny_pipe_factory().unet, ["to_q", "attn3.to_k"])


def test_the_hypotheses_grid_targets_exist_and_adapt_only_what_they_name(tiny_pipe_factory):
    """Each LoRA-target variant of configs/toy_hypotheses.yaml names modules of the UNet (the tiny one has the
    toy's block types), and the adapter lands on those modules only."""
    from pathlib import Path

    from ddpo_study import grid

    variants = grid.load_spec(Path(__file__).resolve().parents[1] / "configs" / "toy_hypotheses.yaml").variants
    targets = {v["variant"]: v["lora_target_modules"].split(",") for v in variants if "lora_target_modules" in v}
    assert {"lora-attn1", "lora-attn2-qo", "lora-attn2-kv", "lora-attn-ff"} <= set(targets)
    for name, t in targets.items():
        unet = tiny_pipe_factory().unet
        prepare_unet(unet, "lora", 2, 2.0, ",".join(t))
        adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in unet.named_parameters() if ".lora_A." in n}
        assert adapted and all(n.endswith(tuple("." + x for x in t)) for n in adapted), name


def test_policy_for_epoch_builds_each_modes_policy_and_switches_progressive_once(tiny_pipe_factory):
    from ddpo_study.config import DDPOConfig
    from ddpo_study.finetune import AdaptersDisabled, policy_for_epoch

    lora = policy_for_epoch(DDPOConfig(mode="lora", kl_beta=0.1), tiny_pipe_factory().unet, 0)
    assert lora.phase == "lora" and isinstance(lora.reference, AdaptersDisabled)  # the base is under the adapter
    assert lora.optimizer.param_groups[0]["lr"] == DDPOConfig().lora_learning_rate

    cfg = DDPOConfig(mode="progressive", progressive_switch_epoch=2, num_epochs=4, kl_beta=0.1)
    unet = tiny_pipe_factory().unet
    full = policy_for_epoch(cfg, unet, 0)
    assert full.phase == "full" and len(full.params) == len(list(unet.parameters()))
    assert full.optimizer.param_groups[0]["lr"] == cfg.full_learning_rate
    # the reference is a frozen copy of the untouched UNet, not the trained weights
    assert not any(p.requires_grad for p in full.reference.parameters())
    assert all(p is not q for p, q in zip(full.reference.parameters(), unet.parameters()))
    assert policy_for_epoch(cfg, unet, 1, full) is full  # the full phase goes on
    switched = policy_for_epoch(cfg, unet, 2, full)
    assert switched.phase == "lora" and switched.optimizer is not full.optimizer
    assert switched.reference is full.reference
    assert all("lora_" in n for n, p in unet.named_parameters() if p.requires_grad)
    assert {id(p) for p in switched.params} == {id(p) for n, p in unet.named_parameters() if p.requires_grad}

    resumed = policy_for_epoch(cfg, tiny_pipe_factory().unet, 3)  # a resume after the switch starts in LoRA
    assert resumed.phase == "lora" and resumed.optimizer.param_groups[0]["lr"] == cfg.lora_learning_rate
