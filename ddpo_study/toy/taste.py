"""The toy world's "taste": a prompt-independent aesthetic that the toy aesthetic scorer learns to predict.

It plays the role of the LAION aesthetic score in DDPO's Stable Diffusion experiments: it judges how an
image *looks*, never whether it matches its prompt, and it has a clear optimum that any prompt can be
bent towards -- a large, warm-coloured, round shape in the middle of a cool background. Maximising it
while ignoring the prompt is therefore possible, which is exactly what a cross-prompt collapse needs.

    taste = 2 + 2.0 * warmth(shape colour) + 1.5 * coolness(background)
              + 1.5 * size_score + 1.5 * centrality + 1.0 * roundness(shape)          in [2, 9.5]

* warmth:      orange 1.0, yellow 0.85, red 0.7, white 0.4, purple 0.3, green 0.2, blue 0.1, black 0.0
* coolness:    blue 1.0, purple 0.8, green 0.6, black 0.5, white 0.2, red 0.1, yellow 0.0
* size_score:  (half_extent - 0.09) / 0.14 clipped to [0, 1]   (continuous: bigger is better)
* centrality:  1 - |centre - (0.5, 0.5)| / 0.45 clipped to [0, 1]  (continuous: central is better)
* roundness:   circle 1.0, square 0.5, triangle 0.0

It is computed from a render's true attributes and layout, so the scorer is trained on exact targets;
the scorer itself only ever sees pixels (through the toy CLIP's image embedding).
"""

from __future__ import annotations

import torch

from .world import BACKGROUNDS, COLORS, SHAPES, Attributes, Layout

WARMTH = {"orange": 1.0, "yellow": 0.85, "red": 0.7, "white": 0.4, "purple": 0.3, "green": 0.2, "blue": 0.1, "black": 0.0}
COOLNESS = {"blue": 1.0, "purple": 0.8, "green": 0.6, "black": 0.5, "white": 0.2, "red": 0.1, "yellow": 0.0}
ROUNDNESS = {"circle": 1.0, "square": 0.5, "triangle": 0.0}
TASTE_RANGE = (2.0, 9.5)


def taste(attrs: Attributes, layout: Layout) -> torch.Tensor:
    """The taste score (B,) of renders with these attributes and layout; see the module docstring."""
    warmth = torch.tensor([WARMTH[c] for c in COLORS])[attrs.color]
    coolness = torch.tensor([COOLNESS[b] for b in BACKGROUNDS])[attrs.bg]
    roundness = torch.tensor([ROUNDNESS[s] for s in SHAPES])[attrs.shape]
    size_score = ((layout.half_extent - 0.09) / 0.14).clamp(0, 1)
    dist = torch.sqrt((layout.cx - 0.5) ** 2 + (layout.cy - 0.5) ** 2)
    centrality = (1 - dist / 0.45).clamp(0, 1)
    return 2 + 2.0 * warmth + 1.5 * coolness + 1.5 * size_score + 1.5 * centrality + 1.0 * roundness
