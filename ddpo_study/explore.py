"""Look at one cell's fine-tuned model next to its base model: is the collapse real, or a loading bug?

:func:`load_cell` rebuilds the base pipeline from the cell's ``config.json`` and loads the run's weights the way a
user would: LoRA through the stock ``pipe.load_lora_weights``, a full UNet with
:func:`ddpo_study.checkpoint.load_full_unet` (progressive: the full-tuned UNet, then its LoRA on top). Weights are
looked for (:func:`ddpo_study.rundir.find_weights`) in ``<run>/final/{lora,unet}`` (what a finished run keeps: the
LoRA in diffusers format, ``pytorch_lora_weights.safetensors``; the full UNet as a diffusers folder, fp16 safetensors
allowed), then in ``<run>/checkpoints/latest/{lora,unet}`` (a run still training). A run without weights is an error
that names what is missing: the tuned model is never silently the base. Then

* :func:`reproduction_check` re-samples the saved eval prompts and seeds and compares them with the saved
  ``eval/epoch_XXXX.npz`` images (base model vs epoch 0, tuned model vs the weights' epoch). Near-zero differences
  mean the weights loaded are the model that was evaluated; large ones point at loading, not training;
* :func:`sample_images` draws prompts x seeds from the base or the tuned model (same seeds: image by image
  comparable, since an image depends only on its prompt, seed and the weights);
* :func:`lora_scale_sweep` scales the LoRA from 0 (the base, or progressive's full-tuned UNet) to 1 (as trained)
  with ``pipe.set_adapters([...], adapter_weights=[s])``: a collapse that appears gradually with the scale is
  a property of the learned update.

Figures: :func:`fig_base_vs_tuned`, :func:`fig_scale_sweep` (rows = models or scales, columns = prompts).
For a checkpoint made elsewhere (TRL, ddpo-pytorch, any diffusers LoRA or UNet), see :mod:`ddpo_study.diagnose`.
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .config import EVAL_SEED_BASE
from .finetune import ADAPTER_NAME
from .images import to_uint8
from .models import resolve_device
from .report import image_axis, load_eval_images, new_figure, styled, tile, wrap_label
from .rundir import RunWeights, eval_epochs, find_weights, read_config


@dataclass
class LoadedCell:
    """A cell's pipeline with its tuned weights, and the base UNet for comparison."""

    cell_dir: Path
    config: dict[str, Any]
    pipe: Any  # StableDiffusionPipeline; pipe.unet is the tuned UNet (LoRA attached for lora/progressive)
    base_unet: Any  # the pretrained UNet, untouched
    adapter: str | None  # the LoRA adapter's name in pipe.unet, if any
    checkpoint_epoch: int  # the epoch of the loaded weights
    weights: RunWeights | None = None  # where they came from

    @property
    def mode(self) -> str:
        return self.config.get("mode", "lora")


@contextmanager
def _quiet_text_encoder_notice():
    """Our adapters hold UNet tensors only: diffusers' notice "no LoRA keys associated to CLIPTextModel" (its
    ``lora_base`` logger) would be a red stderr box in a report. The UNet's own warnings (``loaders.peft``) stay."""
    import logging

    log = logging.getLogger("diffusers.loaders.lora_base")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def load_cell(cell_dir: str | Path, device: str = "auto", adapter_name: str = ADAPTER_NAME) -> LoadedCell:
    """The base pipeline of ``cell_dir``'s config plus its tuned weights (:func:`~ddpo_study.rundir.find_weights`),
    loaded with the stock loaders. A run without weights raises :class:`~ddpo_study.rundir.MissingWeightsError`."""
    from .checkpoint import load_full_unet
    from .models import load_pipeline

    cell_dir = Path(cell_dir)
    cfg = read_config(cell_dir)
    weights = find_weights(cell_dir)  # before loading anything: a missing file fails at once
    dev = resolve_device(device)
    pipe = load_pipeline(cfg["model"], device=dev)
    base_unet = copy.deepcopy(pipe.unet)
    adapter = None
    if weights.unet is not None:
        # fp16 safetensors are upcast to the pipeline's dtype, so the UNet computes like the one trained
        pipe.unet = load_full_unet(weights.unet, torch_dtype=base_unet.dtype).to(dev).eval().requires_grad_(False)
    if weights.lora is not None:  # lora, or progressive: the LoRA trained on top of the full-tuned UNet
        with _quiet_text_encoder_notice():
            pipe.load_lora_weights(str(weights.lora), adapter_name=adapter_name)
        adapter = adapter_name
    return LoadedCell(cell_dir=cell_dir, config=cfg, pipe=pipe, base_unet=base_unet, adapter=adapter,
                      checkpoint_epoch=weights.epoch, weights=weights)


def sample_images(cell: LoadedCell, prompts: Sequence[str], seeds: Sequence[int], which: str = "tuned",
                  lora_scale: float = 1.0, batch_size: int = 64) -> np.ndarray:
    """uint8 images (P, S, H, W, 3) of ``prompts`` x ``seeds`` with the cell's sampling settings.

    ``which``: ``"tuned"`` (with the LoRA at ``lora_scale``) or ``"base"`` (the pretrained UNet).
    """
    import torch

    from .sampler import sample_trajectories

    if which not in ("tuned", "base"):
        raise ValueError(f"which must be 'tuned' or 'base', got {which!r}")
    prompts, seeds = list(prompts), [int(s) for s in seeds]
    unet = cell.base_unet if which == "base" else cell.pipe.unet
    if which == "tuned" and cell.adapter is not None:
        cell.pipe.set_adapters([cell.adapter], adapter_weights=[float(lora_scale)])
    flat_p = [p for p in prompts for _ in seeds]
    flat_s = [s for _ in prompts for s in seeds]
    cfg = cell.config
    with torch.no_grad():
        traj = sample_trajectories(cell.pipe, flat_p, flat_s, num_inference_steps=int(cfg["num_steps"]),
                                   guidance_scale=float(cfg["guidance_scale"]), eta=float(cfg["eta"]), unet=unet,
                                   batch_size=batch_size)
    if which == "tuned" and cell.adapter is not None:
        cell.pipe.set_adapters([cell.adapter], adapter_weights=[1.0])
    arr = to_uint8(traj.images)
    return arr.reshape(len(prompts), len(seeds), *arr.shape[1:])


def lora_scale_sweep(cell: LoadedCell, prompts: Sequence[str], seed: int,
                     scales: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0)) -> np.ndarray:
    """uint8 images (K scales, P, H, W, 3) of ``prompts`` at one seed, the LoRA scaled by each of ``scales``."""
    if cell.adapter is None:
        raise ValueError(f"the {cell.mode} run {cell.cell_dir} has no LoRA to scale")
    return np.stack([sample_images(cell, prompts, [seed], "tuned", s)[:, 0] for s in scales])


def reproduction_check(cell: LoadedCell, max_prompts: int = 8) -> pd.DataFrame:
    """Re-sample the saved eval grids and compare: base vs epoch 0, tuned vs the checkpoint's epoch.

    Columns: model, epoch, images, mean_abs_diff and max_abs_diff (8-bit levels), identical_fraction (pixels), and
    a verdict: ``match`` when the mean difference is below one level. ``note`` warns when the latest checkpoint
    is not the epoch of the last saved grid (e.g. an unfinished run between checkpoints).
    """
    rows = []
    epochs = eval_epochs(cell.cell_dir)
    if not epochs:  # a grid commits eval images for some cells only (its spec's keep_eval)
        return pd.DataFrame([{"model": "", "epoch": math.nan, "images": 0, "verdict": "no saved eval images to "
                              "compare with (this cell's were not committed: the grid spec's keep_eval)"}])
    targets = [("base", 0)]
    saved = [e for e in epochs if e <= cell.checkpoint_epoch]
    if saved:
        targets.append(("tuned", saved[-1]))
    for which, epoch in targets:
        if epoch not in epochs:
            continue
        ref, prompts = load_eval_images(cell.cell_dir, epoch)
        ref = ref[:max_prompts]
        seeds = [EVAL_SEED_BASE + i for i in range(ref.shape[1])]
        new = sample_images(cell, prompts[:max_prompts], seeds, which)
        diff = np.abs(new.astype(np.int16) - ref.astype(np.int16))
        note = ""
        if which == "tuned" and epoch != cell.checkpoint_epoch:
            note = f"checkpoint is epoch {cell.checkpoint_epoch}, last grid at or before it is epoch {epoch}"
        rows.append({"model": which, "epoch": epoch, "images": int(ref.shape[0] * ref.shape[1]),
                     "mean_abs_diff": float(diff.mean()), "max_abs_diff": int(diff.max()),
                     "identical_fraction": float((diff == 0).mean()),
                     "verdict": "match" if diff.mean() < 1.0 else "MISMATCH: not the evaluated model", "note": note})
    return pd.DataFrame(rows)


def default_prompts(cell: LoadedCell, n: int = 8) -> list[str]:
    """The first ``n`` prompts of the cell's saved eval grid (or of its eval prompt set)."""
    epochs = eval_epochs(cell.cell_dir)
    if epochs:
        return load_eval_images(cell.cell_dir, epochs[0])[1][:n]
    from .prompts import load_prompts

    return load_prompts(cell.config["eval_prompt_set"])[:n]


@styled
def fig_base_vs_tuned(base: np.ndarray, tuned: np.ndarray, prompts: Sequence[str], seeds: Sequence[int],
                      title: str = ""):
    """Rows: (base, tuned) for each seed; columns: prompts. A tuned row of identical images = the collapse."""
    p, s, h, w = base.shape[:4]
    rows, labels = [], []
    for j, seed in enumerate(seeds):
        rows += [base[:, j], tuned[:, j]]
        labels += [f"base, seed {seed}", f"tuned, seed {seed}"]
    fig = new_figure(2.0 + 0.6 * p, 1.8 + 0.6 * len(rows))
    ax = fig.add_subplot(1, 1, 1)
    image_axis(ax, tile(np.stack(rows)), len(rows), p, h, w)
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xticklabels([wrap_label(pr, 24) for pr in prompts], rotation=90, fontsize=5)
    ax.set_title(title or "base vs tuned: same prompts (columns), same seeds")
    return fig


@styled
def fig_scale_sweep(images: np.ndarray, scales: Sequence[float], prompts: Sequence[str], seed: int, title: str = ""):
    """Rows: LoRA scales; columns: prompts (one seed)."""
    k, p, h, w = images.shape[:4]
    fig = new_figure(2.0 + 0.6 * p, 1.8 + 0.6 * k)
    ax = fig.add_subplot(1, 1, 1)
    image_axis(ax, tile(images), k, p, h, w)
    ax.set_yticklabels([f"LoRA scale {s:g}" for s in scales], fontsize=7)
    ax.set_xticklabels([wrap_label(pr, 24) for pr in prompts], rotation=90, fontsize=5)
    ax.set_title(title or f"LoRA scale sweep, seed {seed}")
    return fig
