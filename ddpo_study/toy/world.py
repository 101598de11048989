"""The toy world: one shape on a plain background, described by a tiny caption grammar.

Prompts are the world's ground truth. Every caption has the form

    a {size} {color} {shape} {position phrase} on a {bg} background

and every image is drawn by :func:`render` from the attributes that caption names, plus nuisance jitter
(exact position inside its third of the canvas, +-15% size, shade, lighting direction, background
gradient, pixel noise). The jitter is deliberately large and smooth: it is the within-prompt diversity a
base model must reproduce for "different seeds, different images" to be measurable, and it is low-frequency
so a tiny VAE/UNet can actually learn it.

Attributes are integer codes into the tuples below (``SHAPES[attrs.shape[i]]`` ...); ``Attributes`` holds a
batch of them as int64 tensors so rendering, captioning and judging are all vectorised.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass

import torch

SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
#: Half-extent of a shape as a fraction of the image width, before the +-15% jitter.
SIZE_HALF_EXTENT = {"small": 0.11, "large": 0.19}
SIZE_JITTER = 0.15
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
POSITION_PHRASES = (
    "in the top left",
    "at the top",
    "in the top right",
    "on the left",
    "in the center",
    "on the right",
    "in the bottom left",
    "at the bottom",
    "in the bottom right",
)
PALETTE = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 180),
    "orange": (250, 130, 20),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
COLORS = tuple(PALETTE)  # foreground colours: all eight
BACKGROUNDS = ("black", "white", "blue", "green", "red", "yellow", "purple")
#: Fraction of its third of the canvas that a shape centre may wander from the cell centre (each side).
POSITION_JITTER = 0.35

_PALETTE_T = torch.tensor([PALETTE[c] for c in COLORS], dtype=torch.float32)
_BG_T = torch.tensor([PALETTE[c] for c in BACKGROUNDS], dtype=torch.float32)

CAPTION_RE = re.compile(
    r"^a (?P<size>\w+) (?P<color>\w+) (?P<shape>\w+) (?P<position>.+?) on a (?P<bg>\w+) background$"
)


class PromptError(ValueError):
    """A prompt that is not a sentence of the toy grammar."""


@dataclass(frozen=True)
class Attributes:
    """A batch of toy-world attributes, each an int64 tensor of shape (B,) indexing the tuples above."""

    shape: torch.Tensor
    size: torch.Tensor
    position: torch.Tensor
    color: torch.Tensor
    bg: torch.Tensor

    FIELDS = ("shape", "size", "position", "color", "bg")

    def __len__(self) -> int:
        return int(self.shape.shape[0])

    def __getitem__(self, index) -> "Attributes":
        return Attributes(**{f: getattr(self, f)[index] for f in self.FIELDS})

    def repeat_interleave(self, n: int) -> "Attributes":
        """Each row ``n`` times in a row (prompts x seeds layouts flattened prompt-major)."""
        return Attributes(**{f: getattr(self, f).repeat_interleave(n) for f in self.FIELDS})

    @staticmethod
    def stack(items: list[dict[str, int]]) -> "Attributes":
        return Attributes(**{f: torch.tensor([it[f] for it in items], dtype=torch.long) for f in Attributes.FIELDS})

    def as_dicts(self) -> list[dict[str, int]]:
        return [{f: int(getattr(self, f)[i]) for f in self.FIELDS} for i in range(len(self))]


def all_attribute_combinations() -> Attributes:
    """Every valid attribute combination (foreground colour differs from the background): 2646 of them."""
    rows = [
        {"shape": s, "size": z, "position": p, "color": c, "bg": b}
        for s, z, p, c, b in itertools.product(
            range(len(SHAPES)), range(len(SIZES)), range(len(POSITIONS)), range(len(COLORS)), range(len(BACKGROUNDS))
        )
        if COLORS[c] != BACKGROUNDS[b]
    ]
    return Attributes.stack(rows)


def random_attributes(n: int, generator: torch.Generator | None = None) -> Attributes:
    """``n`` attribute tuples drawn uniformly from all valid combinations."""
    table = all_attribute_combinations()
    idx = torch.randint(len(table), (n,), generator=generator)
    return table[idx]


def caption(attrs: Attributes | dict[str, int]) -> str | list[str]:
    """The grammar's sentence for one attribute dict, or a list of sentences for a batch."""
    if isinstance(attrs, Attributes):
        return [caption(d) for d in attrs.as_dicts()]
    return (
        f"a {SIZES[attrs['size']]} {COLORS[attrs['color']]} {SHAPES[attrs['shape']]} "
        f"{POSITION_PHRASES[attrs['position']]} on a {BACKGROUNDS[attrs['bg']]} background"
    )


def parse(prompt: str) -> dict[str, int]:
    """Inverse of :func:`caption`. Raises :class:`PromptError` naming the prompt and the offending part."""
    text = " ".join(prompt.strip().lower().split())
    m = CAPTION_RE.match(text)
    if m is None:
        raise PromptError(
            f"prompt {prompt!r} is not in the toy grammar "
            "'a {size} {color} {shape} {position phrase} on a {bg} background'"
        )
    parts = m.groupdict()
    lookups = {
        "size": SIZES,
        "color": COLORS,
        "shape": SHAPES,
        "position": POSITION_PHRASES,
        "bg": BACKGROUNDS,
    }
    out = {}
    for key, options in lookups.items():
        if parts[key] not in options:
            raise PromptError(f"prompt {prompt!r}: unknown {key} {parts[key]!r}; expected one of {list(options)}")
        out[key] = options.index(parts[key])
    if COLORS[out["color"]] == BACKGROUNDS[out["bg"]]:
        raise PromptError(f"prompt {prompt!r}: the shape's colour equals the background colour")
    return out


def parse_many(prompts: list[str]) -> Attributes:
    return Attributes.stack([parse(p) for p in prompts])


def vocabulary() -> list[str]:
    """Every word the grammar can produce, in a fixed order (the toy tokenizer's vocabulary)."""
    words: list[str] = []
    for text in ("a on background", *SIZES, *COLORS, *SHAPES, *POSITION_PHRASES):
        for w in text.split():
            if w not in words:
                words.append(w)
    return words


@dataclass(frozen=True)
class Layout:
    """The continuous nuisance parameters of a batch of renders (all (B,) float tensors, canvas units 0..1)."""

    cx: torch.Tensor
    cy: torch.Tensor
    half_extent: torch.Tensor


def sample_layout(attrs: Attributes, generator: torch.Generator | None = None) -> Layout:
    """Draw each shape's centre and half-extent: size +-15%, centre jittered inside its third, inside the canvas."""
    n = len(attrs)
    base = torch.tensor([SIZE_HALF_EXTENT[s] for s in SIZES])[attrs.size]
    h = base * (1 + SIZE_JITTER * (2 * torch.rand(n, generator=generator) - 1))
    row = torch.div(attrs.position, 3, rounding_mode="floor").float()
    col = (attrs.position % 3).float()
    jit = POSITION_JITTER * (2 * torch.rand(2, n, generator=generator) - 1)
    cx = ((col + 0.5 + jit[0]) / 3).clamp(min=h, max=1 - h)
    cy = ((row + 0.5 + jit[1]) / 3).clamp(min=h, max=1 - h)
    return Layout(cx=cx, cy=cy, half_extent=h)


def shape_signed_distance(shape: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Signed distance (canvas units, < 0 inside) of points (dx, dy) from centred shapes of half-extent h.

    Shapes broadcast as (B, 1, 1) against (B, H, W) offsets. The triangle is upright and isosceles with
    its apex at (0, -h) and its base from (-h, h) to (h, h); its "distance" is the max over its three
    edge half-planes, which is exact inside and along the edges and only approximate near corners, enough
    for anti-aliasing.
    """
    circle = torch.sqrt(dx**2 + dy**2) - h
    square = torch.maximum(dx.abs(), dy.abs()) - h
    # Slanted edges: the lines through (0,-h) and (+-h, h) are 2|x| - y = h; outside where 2|x| - y - h > 0.
    slant = (2 * dx.abs() - dy - h) / math.sqrt(5)
    triangle = torch.maximum(dy - h, slant)
    return torch.where(shape == 0, circle, torch.where(shape == 1, square, triangle))


def render(
    attrs: Attributes,
    resolution: int = 32,
    generator: torch.Generator | None = None,
    layout: Layout | None = None,
    noise: bool = True,
) -> torch.Tensor:
    """Render a batch: float32 (B, 3, R, R) in [0, 1]. Seeded by ``generator``; vectorised over the batch.

    Nuisance jitter, all drawn per image: centre and size (see :func:`sample_layout`), the shape's shade
    (brightness x U(0.9, 1.1)) and lighting (a linear ramp of +-12% across the shape in a random direction),
    a background gradient (+-15 levels across the canvas in a random direction) and, if ``noise``, Gaussian
    pixel noise with sigma 3 levels. The shape edge is anti-aliased over one pixel.
    """
    n = len(attrs)
    g = generator
    layout = layout or sample_layout(attrs, g)
    coords = (torch.arange(resolution, dtype=torch.float32) + 0.5) / resolution
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    dx = xs[None] - layout.cx[:, None, None]
    dy = ys[None] - layout.cy[:, None, None]
    h = layout.half_extent[:, None, None]
    sd = shape_signed_distance(attrs.shape[:, None, None], dx, dy, h)
    alpha = (0.5 - sd * resolution).clamp(0, 1)  # 1 inside, 0 outside, linear over one pixel

    # Shape colour: palette x shade x lighting ramp across the shape.
    fg = _PALETTE_T[attrs.color][:, :, None, None]  # (B,3,1,1)
    shade = 0.9 + 0.2 * torch.rand(n, 1, 1, 1, generator=g)
    theta = 2 * math.pi * torch.rand(n, generator=g)
    ramp = (torch.cos(theta)[:, None, None] * dx + torch.sin(theta)[:, None, None] * dy) / h
    fg = fg * shade * (1 + 0.12 * ramp.clamp(-1, 1))[:, None]

    # Background: palette + a gentle linear gradient across the canvas.
    bg = _BG_T[attrs.bg][:, :, None, None]
    phi = 2 * math.pi * torch.rand(n, generator=g)
    amp = 15 * torch.rand(n, generator=g)
    grad = (torch.cos(phi)[:, None, None] * (xs[None] - 0.5) + torch.sin(phi)[:, None, None] * (ys[None] - 0.5)) * 2
    bg = bg + (amp[:, None, None] * grad)[:, None]

    img = alpha[:, None] * fg + (1 - alpha[:, None]) * bg
    if noise:
        img = img + 3.0 * torch.randn(img.shape, generator=g)
    return (img / 255.0).clamp(0, 1)


def render_prompts(
    prompts: list[str], resolution: int = 32, generator: torch.Generator | None = None, noise: bool = True
) -> torch.Tensor:
    """:func:`render` for prompts of the grammar (raises :class:`PromptError` on others)."""
    return render(parse_many(prompts), resolution=resolution, generator=generator, noise=noise)
