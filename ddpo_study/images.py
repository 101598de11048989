"""Image tensors <-> 8-bit arrays: the one conversion every reward, metric and saved file uses; image grids as
files (:func:`image_grid`), and whether a file on disk already holds the same images (:func:`pixel_difference`).

Images inside the package are float tensors in [0, 1], channels first (``(..., 3, H, W)``); saved eval files,
JPEG rewards and figures use uint8 channels-last arrays (``(..., H, W, 3)``). Rounding to 8 bits happens here
only, so the JPEG reward scores the image a user would save and a saved eval image reloads exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``(..., 3, H, W)`` floats in [0, 1] -> ``(..., H, W, 3)`` uint8 numpy (values clamped, then rounded)."""
    arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    return arr.movedim(-3, -1).numpy()


def from_uint8(arr: np.ndarray) -> torch.Tensor:
    """Inverse of :func:`to_uint8`: ``(..., H, W, 3)`` uint8 -> ``(..., 3, H, W)`` float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(arr)).movedim(-1, -3).float() / 255


# ------------------------------------------------------------------------------------------------ image files
#: Two renderings of the same samples that differ by at most this many 8-bit levels are the same images: another
#: CPU or library build rounds a few pixels the other way.
FLOAT_NOISE_LEVELS = 1


def image_grid(images: np.ndarray, rows: int, cols: int, upscale: int = 1):
    """uint8 ``(rows * cols, H, W, 3)`` images (row-major) as one PIL image, each pixel ``upscale`` x ``upscale``
    (nearest neighbour, so the pixels stay the samples')."""
    from diffusers.utils import make_image_grid
    from PIL import Image

    grid = make_image_grid([Image.fromarray(a) for a in images], rows=rows, cols=cols)
    return grid.resize((grid.width * upscale, grid.height * upscale), Image.NEAREST)


def pixel_difference(path: Path, image) -> int | None:
    """Largest per-pixel difference (8-bit levels) between the PIL ``image`` and the image file at ``path``; None if
    there is no such file or it has another size."""
    from PIL import Image

    if not path.is_file():
        return None
    with Image.open(path) as old:
        a, b = np.asarray(old.convert("RGB"), dtype=int), np.asarray(image.convert("RGB"), dtype=int)
    return int(np.abs(a - b).max()) if a.shape == b.shape else None
