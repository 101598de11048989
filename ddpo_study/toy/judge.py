"""A hand-written geometric judge: reads toy-world attributes back from pixels, with no learned parts.

It is the independent referee of the toy study (CLIP is a model under test, the judge is not):

1. background  = nearest background-palette colour to the median of the border pixels;
2. foreground  = pixels whose colour distance from that median exceeds half the image's largest distance
   (so anti-aliased edge pixels count when more than half covered);
3. colour      = nearest palette colour to the mean of the strongest half of the foreground pixels;
4. position    = the 3x3 cell holding the centre of the foreground's bounding box;
5. size        = ``small`` if the bounding box half-extent is below the midpoint of the two jittered
   size ranges, else ``large``;
6. shape       = the template (circle / square / upright triangle) inscribed in that bounding box with the
   highest IoU with the foreground mask.

Renders are read back almost perfectly (checked in the tests); the score of a generative model is then a
statement about the model, not about the judge.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .world import (
    BACKGROUNDS,
    COLORS,
    PALETTE,
    SHAPES,
    SIZE_HALF_EXTENT,
    SIZE_JITTER,
    Attributes,
    shape_signed_distance,
)

_PAL = torch.tensor([PALETTE[c] for c in COLORS], dtype=torch.float32) / 255
_BG = torch.tensor([PALETTE[c] for c in BACKGROUNDS], dtype=torch.float32) / 255
#: The largest "small" and the smallest "large" half-extent after jitter; the judge splits halfway.
SIZE_THRESHOLD = 0.5 * (
    SIZE_HALF_EXTENT["small"] * (1 + SIZE_JITTER) + SIZE_HALF_EXTENT["large"] * (1 - SIZE_JITTER)
)
#: Below this colour contrast (RGB distance in [0,1] units) the judge declares that there is no shape.
MIN_CONTRAST = 0.15


@dataclass(frozen=True)
class Reading:
    """What the judge read from a batch: attribute codes, plus ``found`` (False when no shape is visible)."""

    attrs: Attributes
    found: torch.Tensor


def judge(images: torch.Tensor) -> Reading:
    """Read attributes from float images (B, 3, R, R) in [0, 1]."""
    images = images.float().cpu()
    n, _, r, _ = images.shape
    border = torch.cat(
        [images[:, :, 0, :], images[:, :, -1, :], images[:, :, 1:-1, 0], images[:, :, 1:-1, -1]], dim=2
    )  # (B,3,P)
    bg_rgb = border.median(dim=2).values  # (B,3)
    bg_code = torch.cdist(bg_rgb[:, None], _BG[None].expand(n, -1, -1))[:, 0].argmin(dim=1)

    dist = (images - bg_rgb[:, :, None, None]).norm(dim=1)  # (B,R,R)
    peak = dist.flatten(1).max(dim=1).values
    found = peak > MIN_CONTRAST
    mask = dist > 0.5 * peak[:, None, None]
    core = dist > 0.75 * peak[:, None, None]

    core_f = core.float()[:, None]
    fg_rgb = (images * core_f).sum((2, 3)) / core_f.sum((2, 3)).clamp(min=1)
    color_code = torch.cdist(fg_rgb[:, None], _PAL[None].expand(n, -1, -1))[:, 0].argmin(dim=1)

    idx = torch.arange(r, dtype=torch.float32)
    rows_any, cols_any = mask.any(dim=2), mask.any(dim=1)  # (B,R)
    big = torch.tensor(float(r))
    y0 = torch.where(rows_any, idx, big).min(dim=1).values
    y1 = torch.where(rows_any, idx, -big).max(dim=1).values
    x0 = torch.where(cols_any, idx, big).min(dim=1).values
    x1 = torch.where(cols_any, idx, -big).max(dim=1).values
    cx, cy = (x0 + x1 + 1) / (2 * r), (y0 + y1 + 1) / (2 * r)
    half_w, half_h = (x1 - x0 + 1) / (2 * r), (y1 - y0 + 1) / (2 * r)
    col = (cx * 3).floor().clamp(0, 2).long()
    row = (cy * 3).floor().clamp(0, 2).long()
    position_code = row * 3 + col
    size_code = (torch.maximum(half_w, half_h) >= SIZE_THRESHOLD).long()

    # Shape: IoU against each template inscribed in the bounding box (scaled to a square frame so the
    # templates' half-extent is 1 on both axes).
    coords = (idx + 0.5) / r
    u = (coords[None, None, :] - cx[:, None, None]) / half_w.clamp(min=1e-3)[:, None, None]  # (B,1,R)
    v = (coords[None, :, None] - cy[:, None, None]) / half_h.clamp(min=1e-3)[:, None, None]  # (B,R,1)
    u, v = u.expand(n, r, r), v.expand(n, r, r)
    ious = []
    for s in range(len(SHAPES)):
        tmpl = shape_signed_distance(torch.full((n, 1, 1), s), u, v, torch.ones(n, 1, 1)) < 0
        inter = (tmpl & mask).sum((1, 2)).float()
        union = (tmpl | mask).sum((1, 2)).float().clamp(min=1)
        ious.append(inter / union)
    shape_code = torch.stack(ious, dim=1).argmax(dim=1)

    attrs = Attributes(shape=shape_code, size=size_code, position=position_code, color=color_code, bg=bg_code)
    return Reading(attrs=attrs, found=found)


def attribute_accuracy(images: torch.Tensor, target: Attributes) -> dict[str, float]:
    """Per-attribute accuracy of the judge's reading of ``images`` against ``target`` (and ``all`` five)."""
    reading = judge(images)
    out, every = {}, torch.ones(len(target), dtype=torch.bool)
    for field in Attributes.FIELDS:
        ok = (getattr(reading.attrs, field) == getattr(target, field)) & reading.found
        out[field] = ok.float().mean().item()
        every &= ok
    out["all"] = every.float().mean().item()
    return out


def distinct_readings(images: torch.Tensor, target: Attributes) -> dict[str, float]:
    """How many different things the judge reads across prompts at one seed (the #2113 symptom, CLIP-free).

    ``images``: float (P, S, 3, H, W) in [0, 1], P prompts x S seeds (the eval layout); ``target``: the P
    prompts' parsed attributes. For each seed the judge reads the five attributes of the P images and the distinct
    5-tuples are counted (every image where no shape is visible counts as one reading, "no shape"); returns

    * ``distinct``: that count averaged over the seeds (P when every prompt reads differently, 1 when every prompt
      gives the same image);
    * ``distinct_frac``: ``distinct`` divided by the number of distinct true 5-tuples among the P prompts (1.0 for
      a model that keeps prompts as distinguishable as they are).
    """
    if images.ndim != 5:
        raise ValueError(f"images must be (prompts, seeds, 3, H, W), got shape {tuple(images.shape)}")
    p, s = images.shape[:2]
    if len(target) != p:
        raise ValueError(f"{len(target)} target attribute rows for {p} prompts")
    reading = judge(images.flatten(0, 1))
    codes = torch.stack([getattr(reading.attrs, f) for f in Attributes.FIELDS], dim=1)  # (P*S, 5)
    codes = torch.where(reading.found[:, None], codes, torch.full_like(codes, -1)).view(p, s, -1)
    counts = [len({tuple(row) for row in codes[:, j].tolist()}) for j in range(s)]
    truth = torch.stack([getattr(target, f) for f in Attributes.FIELDS], dim=1)
    n_true = len({tuple(row) for row in truth.tolist()})
    distinct = sum(counts) / len(counts)
    return {"distinct": float(distinct), "distinct_frac": float(distinct / n_true)}
