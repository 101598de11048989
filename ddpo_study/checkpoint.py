"""Resumable training state in safetensors and JSON (nothing pickled), written atomically.

A checkpoint folder holds:

* ``unet.safetensors``: the trainable tensors (``lora``: the adapter weights only) or, once any full
  fine-tuning happened (``full``/``progressive``), the whole UNet state dict including adapters;
* ``optimizer.safetensors``: AdamW's per-parameter tensors, its ``param_groups`` in the metadata;
* ``state.json``: the epoch reached, the mode phase and the per-prompt reward buffers;
* ``lora/`` (when an adapter exists): the same adapter in diffusers' ``save_lora_weights`` format, which a
  stock ``pipe.load_lora_weights`` reads; ``unet/`` (full/progressive, final checkpoint only) a diffusers
  UNet folder.

Writes go to a temporary sibling folder that is renamed over ``latest`` only when complete, so a kill at
any moment leaves either the old or the new checkpoint, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Flatten ``optimizer.state_dict()`` into named tensors plus JSON metadata."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{key}"] = value
    meta = {"param_groups": json.dumps(sd["param_groups"]), "scalars": json.dumps(scalars)}
    return tensors, meta


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, path: Path) -> None:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    for name, value in json.loads(meta.get("scalars", "{}")).items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})


def save_checkpoint(folder: Path, unet, optimizer, state: dict[str, Any], whole_unet: bool,
                    export_lora: bool, export_unet: bool = False) -> Path:
    """Write a checkpoint to ``folder`` atomically (see the module docstring)."""
    from .finetune import save_full_unet, save_lora

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if whole_unet:
        tensors = {k: v.detach().cpu().contiguous() for k, v in unet.state_dict().items()}
    else:
        tensors = {n: p.detach().cpu().contiguous() for n, p in unet.named_parameters() if p.requires_grad}
    save_file(tensors, str(tmp / "unet.safetensors"))
    opt_tensors, opt_meta = optimizer_to_tensors(optimizer)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"), metadata=opt_meta)
    (tmp / "state.json").write_text(json.dumps(state) + "\n")
    if export_lora:
        save_lora(unet, tmp / "lora")
    if export_unet:
        save_full_unet(unet, tmp / "unet")
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def load_checkpoint_state(folder: Path) -> dict[str, Any] | None:
    """The ``state.json`` of a complete checkpoint, or None when there is none."""
    folder = Path(folder)
    if not (folder / "state.json").is_file():
        old = folder.with_name(folder.name + ".old")  # killed between the two renames
        if (old / "state.json").is_file():
            os.replace(old, folder)
        else:
            return None
    return json.loads((folder / "state.json").read_text())


def load_unet_tensors(unet, folder: Path) -> None:
    """Copy the saved tensors into ``unet`` (strict on names present in the file)."""
    tensors = load_file(str(Path(folder) / "unet.safetensors"))
    own = unet.state_dict()
    unexpected = [name for name in tensors if name not in own]
    if unexpected:
        raise RuntimeError(f"checkpoint {folder} has tensors the UNet lacks, e.g. {unexpected[:3]}")
    result = unet.load_state_dict(tensors, strict=False)
    missing = [k for k in result.missing_keys if k in tensors]
    if missing:
        raise RuntimeError(f"checkpoint {folder}: could not load {missing[:3]}")
