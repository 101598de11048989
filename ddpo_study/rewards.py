"""Rewards for DDPO, selected by name from a small registry (the pattern of ddpo-pytorch's ``rewards.py``).

A reward is a callable ``reward(images, prompts) -> (rewards, info)``:

* ``images``: float (B, 3, H, W) in [0, 1], as the sampler decodes them; ``prompts``: B strings;
* ``rewards``: float32 (B,) on the CPU (advantages and logs are computed there);
* ``info``: a dict of per-image numpy arrays (B,) for the training log, e.g. ``base_reward`` and
  ``similarity`` of the diversity penalty.

:func:`make_reward` builds one from :data:`REWARDS` and a :class:`RewardContext` (the scorer models), wraps it
in a :class:`DiversityPenalty` when asked, and checks every batch for NaN/inf (:func:`check_finite`) so a
broken reward stops training with its name and batch instead of silently poisoning the advantages.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable

import torch
from PIL import Image

from .config import check_diversity
from .images import to_uint8
from .metrics import cosine_distance, lpips_distance, rms_distance

RewardFn = Callable[[torch.Tensor, list[str]], tuple[torch.Tensor, dict]]
#: JPEG quality of the compressibility rewards (DDPO's setting).
JPEG_QUALITY = 95


class RewardError(ValueError):
    """A reward that cannot be built or returned non-finite values; the message names the reward."""


@dataclass
class RewardContext:
    """What rewards may need; rewards that need a missing piece fail when they are built.

    ``clip``: a :class:`~ddpo_study.models.ClipScorer` (aesthetic, alignment, CLIP diversity feature);
    ``aesthetic``: an :class:`~ddpo_study.aesthetic.AestheticMLP` on that CLIP's image embeddings;
    ``lpips``: an LPIPS model (:func:`ddpo_study.metrics.load_lpips`), for the LPIPS diversity feature;
    ``device``: where images are moved before scoring (the scorer models should live there too).
    """

    clip: object | None = None
    aesthetic: torch.nn.Module | None = None
    lpips: object | None = None
    device: str | torch.device = "cpu"


def check_finite(rewards: torch.Tensor, reward_name: str, batch_index: int | None = None) -> torch.Tensor:
    """Return ``rewards`` unchanged if all finite, else raise :class:`RewardError` with the counts."""
    r = torch.as_tensor(rewards)
    n_nan, n_inf = int(torch.isnan(r).sum()), int(torch.isinf(r).sum())
    if n_nan or n_inf:
        bad = torch.nonzero(~torch.isfinite(r.flatten())).flatten()[:5].tolist()
        where = f"batch {batch_index}" if batch_index is not None else "a batch (index not given)"
        raise RewardError(f"reward {reward_name!r} returned {n_nan} NaN and {n_inf} inf value(s) out of "
                          f"{r.numel()} in {where}; first bad image indices {bad}")
    return rewards


def jpeg_sizes_kb(images: torch.Tensor, quality: int = JPEG_QUALITY) -> torch.Tensor:
    """JPEG file size of each image (B, 3, H, W) in [0, 1], in kB (1000 bytes), encoded by PIL at ``quality``."""
    sizes = []
    # As DDPO: round to 8 bits first, so the reward is the size of the image a user would actually save.
    for arr in to_uint8(images):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
        sizes.append(buf.tell() / 1000)
    return torch.tensor(sizes, dtype=torch.float32)


def _jpeg_reward(sign: float) -> Callable[..., RewardFn]:
    def factory(ctx: RewardContext, quality: int = JPEG_QUALITY) -> RewardFn:
        def reward(images, prompts):
            kb = jpeg_sizes_kb(images, quality)
            return sign * kb, {"jpeg_kb": kb.numpy()}
        return reward
    return factory


def _require(ctx: RewardContext, name: str, *fields: str) -> None:
    missing = [f for f in fields if getattr(ctx, f) is None]
    if missing:
        hints = {"clip": "a ClipScorer, e.g. models.load_clip(path)", "aesthetic": "AestheticMLP.load(path)",
                 "lpips": "metrics.load_lpips(device)"}
        raise RewardError(f"reward {name!r} needs RewardContext." + " and RewardContext.".join(missing) +
                          " (" + "; ".join(f"{m}: {hints[m]}" for m in missing) + ")")


def aesthetic_reward(ctx: RewardContext) -> RewardFn:
    """Aesthetic score of the CLIP image embedding (the MLP L2-normalises it itself); scale is the MLP's."""
    _require(ctx, "aesthetic", "clip", "aesthetic")

    def reward(images, prompts):
        embeds = ctx.clip.image_embeds(images)
        device = next(ctx.aesthetic.parameters()).device
        with torch.no_grad():
            return ctx.aesthetic(embeds.to(device).float()).float().cpu(), {}
    return reward


def clip_alignment_reward(ctx: RewardContext) -> RewardFn:
    """Cosine similarity (unitless, [-1, 1]; not CLIPScore's x100) of each image with its own prompt."""
    _require(ctx, "clip_alignment", "clip")
    cache: dict[str, torch.Tensor] = {}  # ~30 training prompts recur every epoch: encode each once

    def reward(images, prompts):
        new = [p for p in dict.fromkeys(prompts) if p not in cache]
        if new:
            cache.update(zip(new, ctx.clip.text_embeds(new).float().cpu()))
        text = torch.stack([cache[p] for p in prompts])
        return 1 - cosine_distance(ctx.clip.image_embeds(images).float().cpu(), text), {}
    return reward


#: name -> factory(ctx, **kwargs) -> reward function.
REWARDS: dict[str, Callable[..., RewardFn]] = {
    "jpeg_compressibility": _jpeg_reward(-1.0),
    "jpeg_incompressibility": _jpeg_reward(+1.0),
    "aesthetic": aesthetic_reward,
    "clip_alignment": clip_alignment_reward,
}


class DiversityPenalty:
    """``base(images, prompts) - lam * similarity``: a reward that pays for not looking like other images.

    The similarity of image i is the mean similarity to its partners in the batch:

    * ``form="cross_prompt"``: the other images whose prompt is *different* (penalises the trl#2113
      collapse: one image whatever the prompt);
    * ``form="within_prompt"``: the other images with the *same* prompt (penalises mode collapse).

    An image with no partner (e.g. every prompt in the batch is the same, cross form; or its prompt occurs
    once, within form) gets similarity 0, i.e. no penalty, rather than an undefined value.

    Features: ``clip`` = cosine of CLIP image embeddings (needs ``ctx.clip``); ``pixel`` = 1 - RMS distance in
    [0, 1] intensity units; ``lpips`` = 1 - LPIPS distance (needs ``ctx.lpips``). Only the pairs that count
    are computed (matters for LPIPS). ``info`` gets ``base_reward`` and ``similarity`` (numpy (B,)).
    """

    def __init__(self, base: RewardFn, lam: float, form: str = "cross_prompt", feature: str = "clip",
                 ctx: RewardContext | None = None):
        check_diversity(lam, form, feature)  # a ConfigError (a ValueError) naming the bad setting
        ctx = ctx or RewardContext()
        if feature in ("clip", "lpips"):
            _require(ctx, f"diversity penalty ({feature} feature)", feature)
        self.base, self.lam, self.form, self.feature, self.ctx = base, float(lam), form, feature, ctx

    def partner_mask(self, prompts: list[str]) -> torch.Tensor:
        """(B, B) bool: ``mask[i, j]`` iff j counts as a partner of i under this form (never i itself)."""
        codes = {p: k for k, p in enumerate(dict.fromkeys(prompts))}
        ids = torch.tensor([codes[p] for p in prompts])
        same = ids[:, None] == ids[None, :]
        eye = torch.eye(len(prompts), dtype=torch.bool)
        return ~same if self.form == "cross_prompt" else same & ~eye

    def similarity(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Per-image mean similarity to its partners, float32 (B,) on the CPU (0 where it has none)."""
        b = images.shape[0]
        mask = self.partner_mask(prompts)
        i, j = torch.nonzero(torch.triu(mask, diagonal=1), as_tuple=True)  # the mask is symmetric
        sim = torch.zeros(b, b, dtype=torch.float64)
        if len(i):
            if self.feature == "clip":
                feats = self.ctx.clip.image_embeds(images).float().cpu()
                d = cosine_distance(feats[i], feats[j])
            elif self.feature == "pixel":
                flat = images.detach().float().cpu()
                d = rms_distance(flat[i], flat[j], scale=1.0)
            else:
                d = lpips_distance(self.ctx.lpips, images[i], images[j])
            sim[i, j] = sim[j, i] = 1 - d.double()
        count = mask.sum(1)
        return (sim.sum(1) / count.clamp(min=1)).float()  # rows with no partner sum to 0 -> similarity 0

    def __call__(self, images: torch.Tensor, prompts: list[str]):
        base, info = self.base(images, prompts)
        base = torch.as_tensor(base).detach().float().cpu()
        sim = self.similarity(images, prompts)
        info = {**info, "base_reward": base.numpy(), "similarity": sim.numpy()}
        return base - self.lam * sim, info


class Reward:
    """A named reward, as returned by :func:`make_reward`: validates inputs, returns float32 CPU rewards
    checked by :func:`check_finite`. Call as ``reward(images, prompts, batch_index=k)``."""

    def __init__(self, name: str, fn: RewardFn, device: str | torch.device = "cpu"):
        self.name, self.fn, self.device = name, fn, device

    def __call__(self, images: torch.Tensor, prompts: list[str], batch_index: int | None = None):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"reward {self.name!r} expects images (B, 3, H, W), got {tuple(images.shape)}")
        if len(prompts) != images.shape[0]:
            raise ValueError(f"reward {self.name!r}: {len(prompts)} prompts for {images.shape[0]} images")
        with torch.no_grad():
            rewards, info = self.fn(images.to(self.device), list(prompts))
        rewards = torch.as_tensor(rewards).detach().float().cpu().reshape(-1)
        return check_finite(rewards, self.name, batch_index), info

    def __repr__(self) -> str:
        return f"Reward({self.name!r})"


def make_reward(name: str, ctx: RewardContext | None = None, diversity_lambda: float = 0.0,
                diversity_form: str = "cross_prompt", diversity_feature: str = "clip", **kwargs) -> Reward:
    """The reward ``name`` from :data:`REWARDS` (``kwargs`` go to its factory), minus a diversity penalty
    when ``diversity_lambda > 0``. Unknown names raise ``ValueError`` listing the known ones."""
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; known rewards: {sorted(REWARDS)}")
    ctx = ctx or RewardContext()
    fn = REWARDS[name](ctx, **kwargs)
    label = name
    if diversity_lambda != 0:  # DiversityPenalty refuses a negative (or NaN) lambda: config.check_diversity
        fn = DiversityPenalty(fn, diversity_lambda, diversity_form, diversity_feature, ctx)
        label = f"{name}-{diversity_lambda:g}*{diversity_form}_{diversity_feature}_similarity"
    return Reward(label, fn, ctx.device)
