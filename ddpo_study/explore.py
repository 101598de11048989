"""Where a run folder keeps its tuned weights (:func:`find_weights`). Looking at one run's model next to its
base, and checking that the loaded model is the one its training evaluated, is :mod:`ddpo_study.diagnose`.

Weights are looked for in ``<run>/final/{lora,unet}`` (what a finished run keeps: the LoRA in diffusers format,
``pytorch_lora_weights.safetensors``; the full UNet as a diffusers folder, fp16 safetensors allowed), then in
``<run>/checkpoints/latest/{lora,unet}`` (a run still training). A run without weights is an error that names what
is missing: the tuned model is never silently the base.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .finetune import LORA_FILE


class MissingWeightsError(FileNotFoundError):
    """A run folder whose tuned weights are not there; the message names what was looked for."""


@dataclass
class RunWeights:
    """Where a run's tuned weights are: ``lora`` (a diffusers LoRA folder) and/or ``unet`` (a diffusers UNet
    folder), found in ``source`` (``final`` or ``checkpoint``) at ``epoch``."""

    lora: Path | None
    unet: Path | None
    source: str
    epoch: int


def _done_epochs(run_dir: Path) -> int | None:
    try:
        return int(json.loads((run_dir / "DONE").read_text())["epochs"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def find_weights(run_dir: str | Path) -> RunWeights:
    """The tuned weights of a run folder: ``final/`` of a finished run, else ``checkpoints/latest/``.

    ``lora`` runs need ``lora/pytorch_lora_weights.safetensors``; ``full`` runs a ``unet/`` folder (``config.json``
    and its weights); ``progressive`` runs both (the full-tuned UNet and the LoRA trained on top of it). Raises
    :class:`MissingWeightsError` naming the missing files; it never returns "no weights".
    """
    run_dir = Path(run_dir)
    cfg_file = run_dir / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{run_dir} holds no config.json: not a run folder")
    mode = json.loads(cfg_file.read_text()).get("mode", "lora")
    need = {"lora": ("lora",), "full": ("unet",), "progressive": ("unet", "lora")}.get(mode, ("lora",))

    def missing_in(folder: Path) -> list[str]:
        out = []
        if "lora" in need and not (folder / "lora" / LORA_FILE).is_file():
            out.append(str(folder / "lora" / LORA_FILE))
        if "unet" in need and not (folder / "unet" / "config.json").is_file():
            out.append(str(folder / "unet" / "config.json"))
        return out

    done = _done_epochs(run_dir)
    final, ckpt = run_dir / "final", run_dir / "checkpoints" / "latest"
    candidates = []
    if done is not None:
        candidates.append((final, "final", done))
    state_file = ckpt / "state.json"
    if state_file.is_file():
        candidates.append((ckpt, "checkpoint", int(json.loads(state_file.read_text())["epoch"])))
    for folder, source, epoch in candidates:
        if not missing_in(folder):
            return RunWeights(lora=folder / "lora" if "lora" in need else None,
                              unet=folder / "unet" if "unet" in need else None, source=source, epoch=epoch)
    looked = missing_in(final) + (missing_in(ckpt) if state_file.is_file() else [str(state_file)])
    what = {"lora": "its LoRA adapter", "full": "its full UNet", "progressive": "its full UNet and LoRA"}.get(mode)
    if done is not None:
        raise MissingWeightsError(
            f"the finished {mode} run {run_dir} has no tuned weights ({what}): missing {', '.join(looked)}. "
            "Finished runs keep them in final/ (lora/ in diffusers format, unet/ as a diffusers folder); a run "
            "without them can be compared with its base only through its saved eval images")
    raise MissingWeightsError(f"the {mode} run {run_dir} has no checkpoint yet (nothing trained to load): missing "
                              f"{', '.join(looked)}")
