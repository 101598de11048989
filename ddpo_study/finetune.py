"""How the UNet is fine-tuned: LoRA, full, or progressive (full first, then LoRA on top).

* ``lora``: the base UNet is frozen; trainable low-rank adapters ``W + (alpha / r) * B @ A`` are injected into
  the attention projections through diffusers' own PEFT integration (``unet.add_adapter``), so checkpoints are
  standard diffusers LoRA files (``checkpoint.save_lora``) that ``pipe.load_lora_weights`` reads.
* ``full``: every UNet weight is trainable, in float32.
* ``progressive``: starts as ``full``; at a chosen epoch ``switch_to_lora`` freezes the full-tuned weights in
  place and adds a fresh LoRA on top of them.

``policy_for_epoch`` is the one place that turns a config and an epoch into what trains: the phase's parameters,
their optimizer and the frozen reference of a KL term. ``param_distance_from_base`` measures how far the *effective* weights moved, including LoRA deltas, so the three
modes are compared on one scale.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from diffusers import UNet2DConditionModel
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from .config import DEFAULT_LORA_TARGETS, MODES

#: The attention projections of every (self- and cross-) attention block, as in diffusers' LoRA examples and
#: TRL's DDPOTrainer.
DEFAULT_TARGET_MODULES = tuple(DEFAULT_LORA_TARGETS.split(","))
#: peft's default adapter name: what `pipe.load_lora_weights` and our exports use.
ADAPTER_NAME = "default"
#: diffusers' LoRA file name (what ``save_lora_weights`` writes and ``load_lora_weights`` looks for).
LORA_FILE = "pytorch_lora_weights.safetensors"


def has_lora(unet: nn.Module) -> bool:
    return any(isinstance(m, BaseTunerLayer) for m in unet.modules())


def apply_lora(
    unet: UNet2DConditionModel,
    rank: int,
    alpha: float,
    target_modules: Sequence[str] = DEFAULT_TARGET_MODULES,
    init_lora_weights: bool | str = "gaussian",
    adapter_name: str = ADAPTER_NAME,
) -> list[nn.Parameter]:
    """Freeze ``unet`` and add a trainable LoRA adapter; returns the LoRA parameters (float32).

    ``init_lora_weights="gaussian"`` draws ``A ~ N(0, 1/r)`` and sets ``B = 0``, so the adapter starts as an exact
    no-op. The LoRA weights are kept in float32 even on a half-precision base: their updates are tiny relative
    to their values early on and would round away in fp16 (PEFT casts activations to the adapter dtype).
    """
    unet.requires_grad_(False)
    check_target_modules(unet, target_modules)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        init_lora_weights=init_lora_weights,
        target_modules=list(target_modules),
    )
    unet.add_adapter(config, adapter_name=adapter_name)
    params = [p for name, p in unet.named_parameters() if "lora_" in name and f".{adapter_name}." in name]
    if not params:
        raise ValueError(f"no module of the UNet matched target_modules={list(target_modules)}")
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    return params


def check_target_modules(unet: nn.Module, target_modules: Sequence[str]) -> None:
    """Raise ``ValueError`` naming any target that matches no module of ``unet``.

    A target matches a module whose dotted name equals it or ends with ``"." + target`` (peft's rule), so
    ``to_k`` names every attention key projection and ``attn2.to_k`` only the cross-attention ones.
    """
    names = [name for name, _ in unet.named_modules()]
    unmatched = [t for t in target_modules if not any(n == t or n.endswith("." + t) for n in names)]
    if unmatched:
        raise ValueError(f"LoRA target module(s) {unmatched} match no module of the UNet "
                         f"(e.g. {', '.join(n for n in names if 'attn1.to_q' in n)[:120]}...)")


def prepare_unet(
    unet: UNet2DConditionModel, mode: str, lora_rank: int = 4, lora_alpha: float = 4.0,
    target_modules: str | Sequence[str] = DEFAULT_TARGET_MODULES,
) -> list[nn.Parameter]:
    """Set ``unet`` up for ``mode`` and return the parameters to optimise.

    ``lora``: frozen base + LoRA (``apply_lora``). ``full`` and ``progressive``: the whole UNet in float32 with
    every parameter trainable (progressive later calls ``switch_to_lora``).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "lora":
        targets = target_modules.split(",") if isinstance(target_modules, str) else target_modules
        return apply_lora(unet, lora_rank, lora_alpha, targets)
    unet.to(torch.float32)
    unet.requires_grad_(True)
    return list(unet.parameters())


def switch_to_lora(unet: UNet2DConditionModel, rank: int, alpha: float, **lora_kwargs) -> list[nn.Parameter]:
    """Progressive mode's switch: freeze the full-tuned UNet in place and put a fresh LoRA on top.

    Precisely: the base of the new LoRA is the full-tuned UNet *as it is at the switch epoch* (its weights are not
    reset to the pretrained ones, and are frozen from now on); the adapter's ``B`` starts at zero (gaussian init),
    so the switch leaves the UNet's outputs unchanged. The returned LoRA parameters are the only trainable ones:
    the caller must build a NEW optimizer over them (the old one holds frozen tensors and their Adam moments).
    A checkpoint after the switch is the full UNet (``checkpoint.save_full_unet``, which then writes the base
    only) plus the LoRA (``checkpoint.save_lora``).
    """
    if has_lora(unet):
        raise ValueError("the UNet already has a LoRA adapter; switch_to_lora is meant to be called once")
    targets = lora_kwargs.pop("target_modules", DEFAULT_TARGET_MODULES)
    targets = targets.split(",") if isinstance(targets, str) else targets
    return apply_lora(unet, rank, alpha, targets, init_lora_weights="gaussian", **lora_kwargs)


class AdaptersDisabled:
    """Call a LoRA-wrapped UNet as its frozen base model: adapters off for the call, back on afterwards.

    This is the KL-to-base reference for LoRA runs at no memory cost (the base weights are the ones under the
    adapter). Used only under ``torch.no_grad``.
    """

    def __init__(self, unet: UNet2DConditionModel):
        self.unet = unet

    def __call__(self, *args, **kwargs):
        self.unet.disable_adapters()
        try:
            return self.unet(*args, **kwargs)
        finally:
            self.unet.enable_adapters()


# --------------------------------------------------------------------------------------------------------------
# The policy of an epoch: what trains, with which optimizer, against which reference
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Policy:
    """What an epoch's update changes and measures against."""

    phase: str  #: 'lora' or 'full': which weights train now
    params: list  #: the trainable tensors of the phase
    optimizer: torch.optim.Optimizer
    reference: Any = None  #: the frozen base policy for a KL term (None without one)


def phase_of(cfg, epochs_done: int) -> str:
    """'lora' or 'full': which weights train after ``epochs_done`` epochs (progressive switches once)."""
    if cfg.mode == "progressive":
        return "lora" if epochs_done >= cfg.progressive_switch_epoch else "full"
    return cfg.mode


def make_optimizer(cfg, params, lr: float) -> torch.optim.Optimizer:
    """AdamW over ``params`` with the config's betas, weight decay and epsilon."""
    return torch.optim.AdamW(params, lr=lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                             weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon)


def policy_for_epoch(cfg, unet: nn.Module, epochs_done: int, current: Policy | None = None) -> Policy:
    """The policy that trains after ``epochs_done`` epochs: ``current`` if its phase goes on, else a new one.

    Built at the start (or resume) of a run (``current=None``): the KL reference first -- a frozen copy of the
    untouched UNet for full and progressive runs, which change the base weights; the adapter switched off for
    LoRA runs, which keep them -- then the phase's trainable weights. At progressive mode's switch the full-tuned
    UNet is frozen in place under a fresh LoRA with a NEW optimizer (the old one holds frozen tensors and their
    Adam moments); the reference stays the untouched UNet.
    """
    phase = phase_of(cfg, epochs_done)
    if current is not None and current.phase == phase:
        return current
    reference = current.reference if current is not None else None
    if current is None and cfg.kl_to_base_weight > 0 and cfg.mode != "lora":
        reference = copy.deepcopy(unet).requires_grad_(False).eval()
    if current is None and cfg.mode == "progressive":
        prepare_unet(unet, "full")  # the full phase's weights exist (and load from a checkpoint) before any switch
    if phase == "lora" and cfg.mode == "progressive":
        params = switch_to_lora(unet, cfg.lora_rank, cfg.lora_alpha, target_modules=cfg.lora_target_modules)
    else:
        params = prepare_unet(unet, phase, cfg.lora_rank, cfg.lora_alpha, cfg.lora_target_modules)
    if cfg.kl_to_base_weight > 0 and cfg.mode == "lora":
        reference = AdaptersDisabled(unet)
    return Policy(phase, params, make_optimizer(cfg, params, cfg.learning_rate_for(phase)), reference)


# --------------------------------------------------------------------------------------------------------------
# How far did the weights move?
# --------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def effective_state_dict(unet: nn.Module) -> dict[str, torch.Tensor]:
    """The weights the UNet actually computes with, under plain diffusers parameter names.

    For a LoRA-wrapped layer that is ``W_base + sum_a scale_a * B_a @ A_a`` over its active, unmerged adapters
    (PEFT's ``get_delta_weight``, which includes the ``alpha / r`` scale); every other parameter is itself.
    Buffers are not included. Tensors may alias the model's; clone them to keep a snapshot.
    """
    params = {
        name.replace(".base_layer.", "."): p.detach()
        for name, p in unet.named_parameters()
        if "lora_" not in name
    }
    for module_name, module in unet.named_modules():
        if not isinstance(module, BaseTunerLayer) or module.disable_adapters or not hasattr(module, "lora_A"):
            continue
        key = f"{module_name}.weight"
        weight = params[key]
        for adapter in module.active_adapters:
            if adapter in module.lora_A and adapter not in module.merged_adapters:
                weight = weight.float() + module.get_delta_weight(adapter).float()
        params[key] = weight
    return params


def snapshot_base_state(unet: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of ``effective_state_dict(unet)``: the reference for ``param_distance_from_base``.

    Take it before training (for SD 1.x that is one more UNet's worth of host memory).
    """
    return {k: v.detach().to("cpu", copy=True) for k, v in effective_state_dict(unet).items()}


@torch.no_grad()
def param_distance_from_base(unet: nn.Module, base_state: dict[str, torch.Tensor]) -> float:
    """``|| theta_eff - theta_base ||_2`` over all UNet parameters (one flat vector), as a float.

    ``theta_eff`` are the effective weights (``effective_state_dict``: LoRA deltas ``scale * B @ A`` folded into
    their layers), so a LoRA run, a full run and a progressive run (full-tuned base + LoRA) are measured the same
    way: by how much the function's weights changed, not by how many parameters were trained. ``base_state`` is a
    ``snapshot_base_state`` of the starting UNet. Accumulated in float64.
    """
    current = effective_state_dict(unet)
    if current.keys() != base_state.keys():
        missing, extra = base_state.keys() - current.keys(), current.keys() - base_state.keys()
        raise KeyError(
            f"parameter names differ from the base: missing {sorted(missing)[:3]}, extra {sorted(extra)[:3]}"
        )
    total = 0.0
    for name, weight in current.items():
        diff = weight.double() - base_state[name].to(weight.device).double()
        total += float(diff.pow(2).sum())
    return math.sqrt(total)
