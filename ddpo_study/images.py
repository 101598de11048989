"""Image tensors <-> 8-bit arrays: the one conversion every reward, metric and saved file uses.

Images inside the package are float tensors in [0, 1], channels first (``(..., 3, H, W)``); saved eval files,
JPEG rewards and figures use uint8 channels-last arrays (``(..., H, W, 3)``). Rounding to 8 bits happens here
only, so the JPEG reward scores the image a user would save and a saved eval image reloads exactly.
"""

from __future__ import annotations

import numpy as np
import torch


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``(..., 3, H, W)`` floats in [0, 1] -> ``(..., H, W, 3)`` uint8 numpy (values clamped, then rounded)."""
    arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    return arr.movedim(-3, -1).numpy()


def from_uint8(arr: np.ndarray) -> torch.Tensor:
    """Inverse of :func:`to_uint8`: ``(..., H, W, 3)`` uint8 -> ``(..., 3, H, W)`` float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(arr)).movedim(-1, -3).float() / 255
