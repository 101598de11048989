"""Diversity and prompt-alignment metrics on generated evaluation images.

The evaluation set is a grid: ``images`` of shape (P prompts, S seeds, 3, H, W), float in [0, 1], where
seed ``s`` is the *same* initial noise for every prompt. Two diversities are read off that grid:

* **within-prompt** (same prompt, different seeds): mode collapse in the ordinary sense;
* **cross-prompt** (same seed, different prompts): the symptom of huggingface/trl#2113, where after DDPO
  fine-tuning different prompts with the same seed give near-identical images. A model that ignores its
  prompt has cross-prompt diversity ~0 even if its within-prompt diversity looks healthy.

Distances come in several feature spaces, because each can be fooled alone:

* CLIP cosine distance ``1 - cos(e_a, e_b)`` (0 = same direction, 2 = opposite; unitless);
* pixel RMS distance, in 0..255 intensity units in the metrics (the rewards use [0, 1] units);
* LPIPS (AlexNet trunk), when an LPIPS model is available (see :func:`load_lpips`).

Every function here works on images that were actually generated; nothing is inferred from training logs.
The distance primitives are shared with :mod:`ddpo_study.rewards` (its diversity penalty).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

#: File torchvision's ``alexnet(weights="DEFAULT")`` stores in ``$TORCH_HOME/hub/checkpoints``.
ALEXNET_CHECKPOINT = "alexnet-owt-7be5be79.pth"
#: LPIPS was calibrated on 64 px patches; AlexNet's stride-4 stem and two max-pools collapse a 32 px input to
#: 1x1 feature maps in its deeper layers, so smaller images are upsampled (bilinear) to this size first.
LPIPS_MIN_SIZE = 64

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class LpipsUnavailable(RuntimeError):
    """LPIPS cannot be built here (usually: AlexNet's ImageNet weights are not in the torch hub cache)."""


# ----------------------------------------------------------------------------------------- distances
def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``1 - cos`` between rows of ``a`` and ``b`` (N, D) -> (N,), unitless in [0, 2]."""
    a = F.normalize(a.double(), dim=-1)
    b = F.normalize(b.double(), dim=-1)
    return (1 - (a * b).sum(-1)).float()


def rms_distance(a: torch.Tensor, b: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Root-mean-square difference over all non-leading dims: (N, ...) -> (N,), in units of ``scale``.

    With images in [0, 1], ``scale=1`` gives [0, 1] units and ``scale=255`` gives 8-bit intensity levels.
    """
    diff = (a.double() - b.double()).flatten(1)
    return (diff.pow(2).mean(1).sqrt() * scale).float()


@torch.no_grad()
def lpips_distance(model, a: torch.Tensor, b: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """LPIPS distance between images ``a`` and ``b`` (N, 3, H, W) in [0, 1] -> (N,) on the CPU (unitless).

    LPIPS expects [-1, 1] inputs; images below :data:`LPIPS_MIN_SIZE` px are upsampled (see there).
    """
    device = next(model.parameters()).device
    out = []
    for start in range(0, a.shape[0], batch_size):
        x, y = (t[start:start + batch_size].to(device).float() for t in (a, b))
        if min(x.shape[-2:]) < LPIPS_MIN_SIZE:
            size = (max(LPIPS_MIN_SIZE, x.shape[-2]), max(LPIPS_MIN_SIZE, x.shape[-1]))
            x, y = (F.interpolate(t, size=size, mode="bilinear", align_corners=False) for t in (x, y))
        out.append(model(x * 2 - 1, y * 2 - 1).flatten().float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def _mean_pairwise(feats: torch.Tensor, distance: Distance) -> float:
    """feats (G groups, M members, ...): mean over groups of the mean distance over member pairs i < j.

    Returns NaN when M < 2 (no pairs: the diversity is undefined, not zero).
    """
    g, m = feats.shape[:2]
    if m < 2:
        return float("nan")
    i, j = torch.triu_indices(m, m, offset=1)
    a = feats[:, i].reshape(g * len(i), *feats.shape[2:])
    b = feats[:, j].reshape(g * len(j), *feats.shape[2:])
    d = distance(a, b).reshape(g, len(i)).double()
    return float(d.mean(1).mean())


def within_prompt_diversity(feats: torch.Tensor, distance: Distance = cosine_distance) -> float:
    """Mean over prompts of the mean pairwise distance among the S seeds of that prompt.

    ``feats`` is (P, S, ...): embeddings (P, S, D) or images (P, S, 3, H, W); units are ``distance``'s.
    """
    return _mean_pairwise(feats, distance)


def cross_prompt_diversity(feats: torch.Tensor, distance: Distance = cosine_distance) -> float:
    """Mean over seeds of the mean pairwise distance among the P prompts at that same seed.

    ~0 means different prompts give the same image for a given seed: the collapse of huggingface/trl#2113.
    """
    return _mean_pairwise(feats.transpose(0, 1), distance)


# ----------------------------------------------------------------------------------------- alignment
def _similarities(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """(P, S, D) x (P, D) -> cosine similarities (P, S, P) of every image with every eval prompt."""
    img = F.normalize(image_embeds.double(), dim=-1)
    txt = F.normalize(text_embeds.double(), dim=-1)
    return torch.einsum("psd,qd->psq", img, txt)


def prompt_retrieval_accuracy(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> float:
    """Fraction of images whose most CLIP-similar eval prompt is their own (zero-shot over the P prompts).

    ``image_embeds`` (P, S, D), ``text_embeds`` (P, D) with row p the prompt of ``image_embeds[p]``.
    Chance level is 1/P; a model that ignores its prompts sits there.
    """
    sims = _similarities(image_embeds, text_embeds)
    own = torch.arange(sims.shape[0]).view(-1, 1).expand(sims.shape[:2])
    return float((sims.argmax(-1) == own).double().mean())


def clip_score(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> float:
    """Mean cosine between each image embedding (P, S, D) and its own prompt's text embedding (P, D)."""
    sims = _similarities(image_embeds, text_embeds)
    p = sims.shape[0]
    return float(sims[torch.arange(p), :, torch.arange(p)].mean())


def vendi_score(embeds: torch.Tensor) -> float:
    """Vendi score (Friedman & Dieng 2023) of N embeddings (N, D) with the cosine-similarity kernel.

    ``exp(-sum_i l_i log l_i)`` over the eigenvalues ``l_i`` of ``K / N``, ``K_ab = cos(e_a, e_b)``: the
    effective number of distinct items, 1 when all are identical and N when all are orthogonal.
    """
    x = F.normalize(embeds.double().flatten(1), dim=-1)
    n = x.shape[0]
    eig = torch.linalg.eigvalsh(x @ x.T / n).clamp(min=0)  # K is PSD; clamp round-off negatives
    eig = eig[eig > 0]  # 0 log 0 = 0
    return float(torch.exp(-(eig * eig.log()).sum()))


# ----------------------------------------------------------------------------------------- helpers
def as_image_grid(images) -> torch.Tensor:
    """(P, S, 3, H, W) float [0, 1] tensor from a tensor/array of that layout or the eval ``.npz`` layout
    (P, S, H, W, 3) uint8."""
    x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images)
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    if x.ndim == 5 and x.shape[-1] == 3 and x.shape[2] != 3:
        x = x.permute(0, 1, 4, 2, 3)
    if x.ndim != 5 or x.shape[2] != 3:
        raise ValueError(f"expected eval images (P prompts, S seeds, 3, H, W), got shape {tuple(x.shape)}")
    return x.float()


def _embed(clip, flat: torch.Tensor, batch_size: int) -> torch.Tensor:
    """CLIP image embeddings of (N, 3, H, W) images in chunks of ``batch_size`` (bounds GPU memory), on the CPU."""
    chunks = [clip.image_embeds(flat[i:i + batch_size]).float().cpu() for i in range(0, len(flat), batch_size)]
    return torch.cat(chunks)


def grid_embeds(images, clip, batch_size: int = 64) -> torch.Tensor:
    """CLIP image embeddings (P, S, D) float32 on the CPU of an eval grid (``images`` as in
    :func:`compute_eval_metrics`).

    The base model's grid does not change during a run: embed it once with this function and pass the result
    as ``compute_eval_metrics(..., base_images=base, base_embeds=...)`` at every eval (same ``batch_size``
    gives the same numbers as letting :func:`compute_eval_metrics` embed ``base_images`` itself).
    """
    x = as_image_grid(images)
    return _embed(clip, x.flatten(0, 1), batch_size).reshape(*x.shape[:2], -1)


def distance_from_base(images, base_images, clip=None, *, embeds: torch.Tensor | None = None,
                       base_embeds: torch.Tensor | None = None, batch_size: int = 64) -> dict[str, float]:
    """How far the fine-tuned images moved from the base model's (same prompt, same seed), averaged.

    Returns ``pixel`` (RMS, 0..255 units) and, given ``clip`` or both embeddings (P, S, D), ``clip``
    (cosine distance).
    """
    x, base = as_image_grid(images), as_image_grid(base_images)
    if x.shape != base.shape:
        raise ValueError(f"images {tuple(x.shape)} and base images {tuple(base.shape)} must match")
    out = {"pixel": float(rms_distance(x.flatten(0, 1), base.flatten(0, 1), scale=255.0).double().mean())}
    if embeds is None and clip is not None:
        embeds = _embed(clip, x.flatten(0, 1), batch_size)
    if base_embeds is None and clip is not None:
        base_embeds = _embed(clip, base.flatten(0, 1), batch_size)
    if embeds is not None and base_embeds is not None:
        out["clip"] = float(cosine_distance(embeds.flatten(0, -2), base_embeds.flatten(0, -2)).double().mean())
    return out


# ----------------------------------------------------------------------------------------- LPIPS loading
def load_lpips(device: str | torch.device = "cpu"):
    """``lpips.LPIPS(net="alex")`` on ``device``, eval mode, frozen; raises :class:`LpipsUnavailable` offline.

    Its linear heads ship with the ``lpips`` package, but the AlexNet trunk comes from torchvision's
    ImageNet weights, which torchvision downloads on first use. The file is checked for *first*, so that an
    offline machine fails at once instead of hanging on a network timeout.
    """
    import torch.hub

    ckpt = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_CHECKPOINT
    how = (f"LPIPS needs torchvision's AlexNet ImageNet weights at {ckpt}. On a machine with internet run "
           "`python -c 'import torchvision; torchvision.models.alexnet(weights=\"DEFAULT\")'` and copy "
           f"$TORCH_HOME/hub/checkpoints/{ALEXNET_CHECKPOINT} (default ~/.cache/torch/hub/checkpoints) here, "
           "or set TORCH_HOME to a folder holding hub/checkpoints/" + ALEXNET_CHECKPOINT + ".")
    if not ckpt.is_file():
        raise LpipsUnavailable(how)
    try:
        import lpips
    except ImportError as err:  # pragma: no cover - lpips is a declared dependency
        raise LpipsUnavailable(f"the lpips package is not installed ({err})") from err
    try:
        with warnings.catch_warnings():  # lpips uses torchvision's deprecated `pretrained=` argument
            warnings.filterwarnings("ignore", message=".*deprecated since 0.13", category=UserWarning)
            model = lpips.LPIPS(net="alex", verbose=False)
    except Exception as err:  # a corrupt/partial checkpoint, a torchvision API change...
        raise LpipsUnavailable(f"could not build LPIPS: {err}. {how}") from err
    return model.to(device).eval().requires_grad_(False)


def maybe_load_lpips(device: str | torch.device = "cpu"):
    """``(model, None)`` when LPIPS loads, else ``(None, warning)``: callers fall back to CLIP features and
    record the warning next to their metrics."""
    try:
        return load_lpips(device), None
    except LpipsUnavailable as err:
        return None, f"LPIPS unavailable, LPIPS metrics skipped (CLIP/pixel only): {err}"


# ----------------------------------------------------------------------------------------- all at once
def image_rewards(images, prompts: list[str], reward_fn, batch_size: int = 64) -> torch.Tensor:
    """Per-image rewards ``(P, S)`` float64 of an eval grid (``images`` as in :func:`compute_eval_metrics`).

    Kept per image (saved beside the eval images) so that two evaluations of the same prompts and seeds can
    be compared image by image: a paired difference has far less noise than two independent means.
    """
    x = as_image_grid(images)
    p, s = x.shape[:2]
    flat = x.flatten(0, 1)
    flat_prompts = [pr for pr in prompts for _ in range(s)]
    rewards = torch.cat([torch.as_tensor(reward_fn(flat[i:i + batch_size], flat_prompts[i:i + batch_size])[0])
                         .double().cpu().flatten() for i in range(0, len(flat), batch_size)])
    return rewards.reshape(p, s)


def compute_eval_metrics(images, prompts: list[str], clip, base_images=None, reward_fn=None, lpips=None,
                         batch_size: int = 64, rewards: torch.Tensor | None = None,
                         base_embeds: torch.Tensor | None = None) -> dict[str, float]:
    """Every metric of an eval grid, as a flat dict of floats (one row of ``metrics.csv``).

    ``images``: (P, S, 3, H, W) float [0, 1] (or the ``.npz`` uint8 layout); ``prompts``: the P prompts;
    ``clip``: a :class:`~ddpo_study.models.ClipScorer`; ``base_images``: the base model's grid for the same
    prompts and seeds; ``reward_fn(images (B,3,H,W), prompts) -> (rewards, info)``; ``lpips``: an LPIPS model;
    ``rewards``: per-image rewards already computed by :func:`image_rewards` (then ``reward_fn`` is not called);
    ``base_embeds``: :func:`grid_embeds` of ``base_images``, computed once per run (then ``base_images`` is not
    re-embedded; it is still needed for the pixel distance).

    Keys: ``reward_mean``/``reward_std`` (population std), ``within_div_{clip,pixel[,lpips]}``,
    ``cross_div_{clip,pixel[,lpips]}`` (CLIP cosine distance; pixel RMS in 0..255; LPIPS),
    ``retrieval_acc`` and ``retrieval_chance`` (1/P), ``clip_score``, ``vendi_clip`` (over all P*S images),
    ``dist_base_pixel``/``dist_base_clip`` (with ``base_images``). Within-prompt values are NaN when S = 1.
    """
    x = as_image_grid(images)
    p, s = x.shape[:2]
    if len(prompts) != p:
        raise ValueError(f"{len(prompts)} prompts for an image grid of {p} prompts")
    flat = x.flatten(0, 1)  # prompt-major: image k is prompt k // S, seed k % S
    out: dict[str, float] = {}

    if rewards is None and reward_fn is not None:
        rewards = image_rewards(x, prompts, reward_fn, batch_size)
    if rewards is not None:
        rewards = torch.as_tensor(rewards).double()
        out["reward_mean"] = float(rewards.mean())
        out["reward_std"] = float(rewards.std(unbiased=False))

    embeds = _embed(clip, flat, batch_size).reshape(p, s, -1)
    text = clip.text_embeds(list(prompts)).float().cpu()
    pixel = lambda a, b: rms_distance(a, b, scale=255.0)  # noqa: E731 - a one-line unit choice
    out["within_div_clip"] = within_prompt_diversity(embeds, cosine_distance)
    out["within_div_pixel"] = within_prompt_diversity(x, pixel)
    out["cross_div_clip"] = cross_prompt_diversity(embeds, cosine_distance)
    out["cross_div_pixel"] = cross_prompt_diversity(x, pixel)
    if lpips is not None:
        lp = lambda a, b: lpips_distance(lpips, a, b, batch_size)  # noqa: E731
        out["within_div_lpips"] = within_prompt_diversity(x, lp)
        out["cross_div_lpips"] = cross_prompt_diversity(x, lp)
    out["retrieval_acc"] = prompt_retrieval_accuracy(embeds, text)
    out["retrieval_chance"] = 1.0 / p
    out["clip_score"] = clip_score(embeds, text)
    out["vendi_clip"] = vendi_score(embeds.flatten(0, 1))
    if base_images is not None:
        base = as_image_grid(base_images)
        if base_embeds is None:
            base_embeds = grid_embeds(base, clip, batch_size)
        elif tuple(base_embeds.shape[:2]) != (p, s):
            raise ValueError(f"base_embeds {tuple(base_embeds.shape)} do not match the image grid ({p}, {s})")
        base_embeds = base_embeds.float().cpu().reshape(p, s, -1)
        dist = distance_from_base(x, base, embeds=embeds, base_embeds=base_embeds)
        out["dist_base_pixel"], out["dist_base_clip"] = dist["pixel"], dist["clip"]
    return out
