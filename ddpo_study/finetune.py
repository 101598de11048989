"""How the UNet is fine-tuned: LoRA, full, or progressive (full first, then LoRA on top), and checkpoints.

* ``lora``: the base UNet is frozen; trainable low-rank adapters ``W + (alpha / r) * B @ A`` are injected into
  the attention projections through diffusers' own PEFT integration (``unet.add_adapter``), so checkpoints are
  standard diffusers LoRA files that ``pipe.load_lora_weights`` reads.
* ``full``: every UNet weight is trainable, in float32.
* ``progressive``: starts as ``full``; at a chosen epoch ``switch_to_lora`` freezes the full-tuned weights in
  place and adds a fresh LoRA on top of them.

``param_distance_from_base`` measures how far the *effective* weights moved, including LoRA deltas, so the three
modes are compared on one scale.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME, convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file
from torch import nn

MODES = ("lora", "full", "progressive")
#: The attention projections of every (self- and cross-) attention block, as in diffusers' LoRA examples.
DEFAULT_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
ADAPTER_NAME = "default"


def lora_parameters(unet: nn.Module) -> list[nn.Parameter]:
    """All LoRA parameters (``lora_A`` / ``lora_B`` of every adapter) of ``unet``."""
    return [p for name, p in unet.named_parameters() if "lora_" in name]


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


def prepare_unet(
    unet: UNet2DConditionModel, mode: str, lora_rank: int = 4, lora_alpha: float = 4.0
) -> list[nn.Parameter]:
    """Set ``unet`` up for ``mode`` and return the parameters to optimise.

    ``lora``: frozen base + LoRA (``apply_lora``). ``full`` and ``progressive``: the whole UNet in float32 with
    every parameter trainable (progressive later calls ``switch_to_lora``).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "lora":
        return apply_lora(unet, lora_rank, lora_alpha)
    unet.to(torch.float32)
    unet.requires_grad_(True)
    return list(unet.parameters())


def switch_to_lora(unet: UNet2DConditionModel, rank: int, alpha: float, **lora_kwargs) -> list[nn.Parameter]:
    """Progressive mode's switch: freeze the full-tuned UNet in place and put a fresh LoRA on top.

    Precisely: the base of the new LoRA is the full-tuned UNet *as it is at the switch epoch* (its weights are not
    reset to the pretrained ones, and are frozen from now on); the adapter's ``B`` starts at zero (gaussian init),
    so the switch leaves the UNet's outputs unchanged. The returned LoRA parameters are the only trainable ones:
    the caller must build a NEW optimizer over them (the old one holds frozen tensors and their Adam moments).
    A checkpoint after the switch is the full UNet (``save_full_unet``, which then writes the base only) plus the
    LoRA (``save_lora``).
    """
    if has_lora(unet):
        raise ValueError("the UNet already has a LoRA adapter; switch_to_lora is meant to be called once")
    return apply_lora(unet, rank, alpha, init_lora_weights="gaussian", **lora_kwargs)


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
# Checkpoints
# --------------------------------------------------------------------------------------------------------------


def _unet_of(pipe_or_unet) -> UNet2DConditionModel:
    return getattr(pipe_or_unet, "unet", pipe_or_unet)


def save_lora(pipe_or_unet, out_dir: str | Path, adapter_name: str = ADAPTER_NAME) -> Path:
    """Write the UNet's LoRA as a diffusers LoRA file (``pytorch_lora_weights.safetensors``) in ``out_dir``.

    The adapter's ``LoraConfig`` is stored as the file's metadata. This matters: without it
    ``load_lora_weights`` infers the rank from the tensor shapes and assumes ``alpha == rank``, silently changing
    the scale ``alpha / r`` of any adapter trained with ``alpha != rank``.
    """
    unet = _unet_of(pipe_or_unet)
    state_dict = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet, adapter_name=adapter_name))
    metadata = unet.peft_config[adapter_name].to_dict()
    StableDiffusionPipeline.save_lora_weights(
        out_dir,
        unet_lora_layers=state_dict,
        safe_serialization=True,
        unet_lora_adapter_metadata=metadata,
    )
    return Path(out_dir)


def load_lora(pipe: StableDiffusionPipeline, lora_dir: str | Path, adapter_name: str | None = None):
    """Load a ``save_lora`` checkpoint into ``pipe.unet`` with the stock ``pipe.load_lora_weights``; returns pipe."""
    pipe.load_lora_weights(str(lora_dir), adapter_name=adapter_name)
    return pipe


def _base_state_dict(unet: nn.Module) -> dict[str, torch.Tensor]:
    """The UNet's own (non-LoRA) tensors under their plain diffusers names.

    PEFT renames a wrapped layer's weights to ``<module>.base_layer.weight`` and adds ``lora_*`` tensors; undoing
    that gives keys ``UNet2DConditionModel`` loads.
    """
    return {
        name.replace(".base_layer.", "."): tensor
        for name, tensor in unet.state_dict().items()
        if "lora_" not in name
    }


def save_full_unet(unet: UNet2DConditionModel, out_dir: str | Path) -> Path:
    """Write the UNet in diffusers format (``config.json`` + ``diffusion_pytorch_model.safetensors``).

    With a LoRA attached (progressive mode after the switch) only the base weights are written, under their
    plain names, so ``UNet2DConditionModel.from_pretrained`` loads them; the adapter goes through ``save_lora``.
    """
    out_dir = Path(out_dir)
    if not has_lora(unet):
        unet.save_pretrained(out_dir, safe_serialization=True)
        return out_dir
    # save_pretrained would write PEFT's renamed keys; write the plain base state dict ourselves.
    out_dir.mkdir(parents=True, exist_ok=True)
    unet.save_config(out_dir)
    state = {k: v.detach().contiguous().cpu() for k, v in _base_state_dict(unet).items()}
    save_file(state, out_dir / SAFETENSORS_WEIGHTS_NAME, metadata={"format": "pt"})
    return out_dir


def load_full_unet(path: str | Path, torch_dtype: torch.dtype | None = None) -> UNet2DConditionModel:
    """Load a ``save_full_unet`` checkpoint from a local folder."""
    return UNet2DConditionModel.from_pretrained(str(path), torch_dtype=torch_dtype, local_files_only=True)


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
