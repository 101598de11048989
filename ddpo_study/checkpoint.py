"""Both kinds of checkpoint: resumable training state, and the diffusers-format exports of the trained weights.

Everything is safetensors and JSON (nothing pickled). A resume checkpoint (``checkpoints/latest``) holds:

* ``unet.safetensors``: the trainable tensors (``lora``: the adapter weights only) or, once any full
  fine-tuning happened (``full``/``progressive``), the whole UNet state dict including adapters;
* ``optimizer.safetensors``: AdamW's per-parameter tensors, its ``param_groups`` in the metadata;
* ``state.json``: the epoch reached, the mode phase and the per-prompt reward buffers;
* ``objective.safetensors`` (objectives with state of their own, e.g. NFT's old policy): the objective's tensors;
* ``lora/`` (when an adapter exists): the same adapter in diffusers' ``save_lora_weights`` format, which a
  stock ``pipe.load_lora_weights`` reads.

Writes go to a temporary sibling folder that is renamed over ``latest`` only when complete, so a kill at
any moment leaves either the old or the new checkpoint, never half of one.

At the end of a run :func:`export_final` writes ``final/``, the weights a user loads and that are kept after
the resume checkpoints are deleted: ``final/lora/pytorch_lora_weights.safetensors`` (lora, progressive; tens
of kB for the toy) and ``final/unet/`` (full, progressive: the UNet without the adapter, in fp16). For an
SD3-type pipeline the network is the transformer: its LoRA is in ``StableDiffusion3Pipeline.save_lora_weights``'
format (stock ``load_lora_weights`` reads it) and the full weights go to ``final/transformer/``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME, convert_state_dict_to_diffusers
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .finetune import ADAPTER_NAME, LORA_FILE, has_lora
from .rundir import DENOISER_FOLDERS, MODEL_CONFIG_FILE


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


OBJECTIVE_FILE = "objective.safetensors"


def save_checkpoint(folder: Path, unet, optimizer, state: dict[str, Any], whole_unet: bool,
                    export_lora: bool, objective_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a resume checkpoint to ``folder`` atomically (see the module docstring); ``objective_tensors`` are the
    objective's own state (``Objective.state_dict``), when it has one."""
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
    if objective_tensors:
        save_file({k: v.detach().cpu().contiguous() for k, v in objective_tensors.items()}, str(tmp / OBJECTIVE_FILE))
    if export_lora:
        save_lora(unet, tmp / "lora")
    _swap_in(tmp, folder)
    return folder


def _swap_in(tmp: Path, folder: Path) -> None:
    """Replace ``folder`` by the complete ``tmp`` with two renames (see :func:`load_checkpoint_state`)."""
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


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


def load_objective_tensors(folder: Path) -> dict[str, torch.Tensor] | None:
    """The objective's tensors of a checkpoint (``save_checkpoint``'s ``objective_tensors``), or None."""
    path = Path(folder) / OBJECTIVE_FILE
    return load_file(str(path)) if path.is_file() else None


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


# --------------------------------------------------------------------------------------------------------------
# Exports in diffusers format
# --------------------------------------------------------------------------------------------------------------


def denoiser_folder(model: nn.Module) -> str:
    """``unet`` or ``transformer``: the folder name of ``model``'s kind of network."""
    return DENOISER_FOLDERS.get(type(model).__name__, "unet")


def _denoiser(pipe_or_model) -> nn.Module:
    for name in ("unet", "transformer"):
        if getattr(pipe_or_model, name, None) is not None:
            return getattr(pipe_or_model, name)
    return pipe_or_model


def save_lora(pipe_or_unet, out_dir: str | Path, adapter_name: str = ADAPTER_NAME) -> Path:
    """Write the network's LoRA as a diffusers LoRA file (``pytorch_lora_weights.safetensors``) in ``out_dir``.

    The adapter's ``LoraConfig`` is stored as the file's metadata. This matters: without it
    ``load_lora_weights`` infers the rank from the tensor shapes and assumes ``alpha == rank``, silently changing
    the scale ``alpha / r`` of any adapter trained with ``alpha != rank``. An SD3 transformer's adapter is written
    as ``StableDiffusion3Pipeline.save_lora_weights`` does (peft's key names under ``transformer.``).
    """
    model = _denoiser(pipe_or_unet)
    peft_sd = get_peft_model_state_dict(model, adapter_name=adapter_name)
    metadata = model.peft_config[adapter_name].to_dict()
    if isinstance(model, SD3Transformer2DModel):
        StableDiffusion3Pipeline.save_lora_weights(out_dir, transformer_lora_layers=peft_sd, safe_serialization=True,
                                                   transformer_lora_adapter_metadata=metadata)
    else:
        StableDiffusionPipeline.save_lora_weights(out_dir, unet_lora_layers=convert_state_dict_to_diffusers(peft_sd),
                                                  safe_serialization=True, unet_lora_adapter_metadata=metadata)
    return Path(out_dir)


def load_lora_into(unet: nn.Module, path: str | Path, adapter_name: str = ADAPTER_NAME) -> Path:
    """Copy a diffusers LoRA file (``save_lora``'s, or a run's ``final/lora`` folder) into ``unet``'s existing
    adapter ``adapter_name``, so training starts from it (``init_lora``). Returns the file read.

    Unlike ``pipe.load_lora_weights``, which adds a new adapter, this fills the trainable one that
    ``finetune.apply_lora`` built, so the optimizer's parameters are the loaded ones. The file must be that
    adapter's twin: the same rank, alpha and target layers (its metadata and tensor names are checked), else a
    :class:`ValueError` names the first difference.
    """
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft.utils import set_peft_model_state_dict

    path = Path(path)
    file = path / LORA_FILE if path.is_dir() else path
    if not file.is_file():
        raise ValueError(f"init_lora: no LoRA file at {file}")
    with safe_open(str(file), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("lora_adapter_metadata", "{}"))
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    want = unet.peft_config[adapter_name]
    prefix = denoiser_folder(unet)  # save_lora_weights' key prefix: "unet." or "transformer."
    for key, own in (("r", want.r), ("lora_alpha", want.lora_alpha)):
        theirs = meta.get(f"{prefix}.{key}")
        if theirs is not None and float(theirs) != float(own):
            raise ValueError(f"init_lora: {file} has {key} {theirs}, this run's adapter {own}")
    stripped = {k.removeprefix(f"{prefix}."): v for k, v in tensors.items()}
    peft_sd = convert_unet_state_dict_to_peft(stripped) if prefix == "unet" else stripped
    own = {k for k in get_peft_model_state_dict(unet, adapter_name=adapter_name)}
    missing, extra = sorted(own - set(peft_sd)), sorted(set(peft_sd) - own)
    if missing or extra:
        raise ValueError(f"init_lora: {file} does not match this run's LoRA layers (missing {missing[:2]}, "
                         f"unexpected {extra[:2]})")
    try:
        set_peft_model_state_dict(unet, peft_sd, adapter_name=adapter_name)
    except RuntimeError as err:  # a shape mismatch: another rank or base model
        raise ValueError(f"init_lora: {file} does not fit this run's LoRA ({str(err).splitlines()[0]})") from err
    return file


def base_state_dict(unet: nn.Module) -> dict[str, torch.Tensor]:
    """The UNet's own (non-LoRA) tensors under their plain diffusers names.

    PEFT renames a wrapped layer's weights to ``<module>.base_layer.weight`` and adds ``lora_*`` tensors; undoing
    that gives keys ``UNet2DConditionModel`` loads.
    """
    return {
        name.replace(".base_layer.", "."): tensor
        for name, tensor in unet.state_dict().items()
        if "lora_" not in name
    }


def save_full_unet(unet: UNet2DConditionModel, out_dir: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write the UNet in diffusers format (``config.json`` + ``diffusion_pytorch_model.safetensors``).

    With a LoRA attached (progressive mode after the switch) only the base weights are written, under their
    plain names, so ``UNet2DConditionModel.from_pretrained`` loads them; the adapter goes through ``save_lora``.
    ``dtype`` (e.g. ``torch.float16`` for a small export) casts the floating-point tensors on the way out.
    """
    out_dir = Path(out_dir)
    # save_pretrained would write PEFT's renamed keys under an adapter; write the plain state dict ourselves.
    out_dir.mkdir(parents=True, exist_ok=True)
    unet.save_config(out_dir)
    state = {k: v.detach().to(dtype if dtype is not None and v.is_floating_point() else v.dtype).contiguous().cpu()
             for k, v in base_state_dict(unet).items()}
    save_file(state, out_dir / SAFETENSORS_WEIGHTS_NAME, metadata={"format": "pt"})
    return out_dir


def load_full_unet(path: str | Path, torch_dtype: torch.dtype | None = None) -> UNet2DConditionModel:
    """Load a ``save_full_unet`` checkpoint from a local folder (a UNet, or an SD3 transformer by its config)."""
    config = json.loads((Path(path) / MODEL_CONFIG_FILE).read_text())
    cls = SD3Transformer2DModel if config.get("_class_name") == "SD3Transformer2DModel" else UNet2DConditionModel
    return cls.from_pretrained(str(path), torch_dtype=torch_dtype, local_files_only=True)



def export_final(folder: Path, unet: UNet2DConditionModel, full_unet: bool) -> Path:
    """Write the trained weights to ``folder`` (``final/``) atomically: ``lora/`` when an adapter exists, and with
    ``full_unet`` (any full fine-tuning happened) ``unet/`` (``transformer/`` for SD3) in fp16 (the toy: a few MB)."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if has_lora(unet):
        save_lora(unet, tmp / "lora")
    if full_unet:
        save_full_unet(unet, tmp / denoiser_folder(unet), dtype=torch.float16)
    _swap_in(tmp, folder)
    return folder
