"""The PPO pieces of DDPO: the clipped surrogate loss and the random choice of timesteps to train on.

DDPO-IS (Black et al., 2023, eq. 5 with PPO's clipping) maximises, per denoising step of a sampled chain,

    E[ min( r * A,  clip(r, 1 - eps, 1 + eps) * A ) ],     r = p_theta(x_{t-1} | x_t, c) / p_old(x_{t-1} | x_t, c),

where ``A`` is the (normalised) reward of the whole image, shared by all its steps. We minimise the negative,
written as ``max(-A * r, -A * clip(r))``. Log-probs here are the per-dimension *means* of ``sampler``, so
``r = exp(log_prob - old_log_prob)`` is a per-dimension ratio; that is why DDPO's clip range is tiny (1e-4).
"""

from __future__ import annotations

import torch
from torch import Tensor


def clipped_surrogate_loss(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    clip_range: float = 1e-4,
    adv_clip_max: float = 5.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate loss (to minimise) and diagnostics.

    Args:
        log_prob: log-probs under the current policy (with grad), any shape, e.g. ``(B,)`` or ``(B, K)``.
        old_log_prob: the sampling-time log-probs, same shape (treated as constants).
        advantages: per-element advantages of the same shape, or per-sample ``(B,)`` advantages which are
            broadcast over trailing dims (every step of an image shares that image's advantage).
        clip_range: ``eps``; the ratio is clipped to ``[1 - eps, 1 + eps]``.
        adv_clip_max: advantages are first clamped to ``[-adv_clip_max, adv_clip_max]`` (outlier rewards).

    Returns:
        ``(loss, stats)`` where ``loss = mean(max(-A * r, -A * clamp(r, 1 - eps, 1 + eps)))`` and ``stats`` holds
        detached scalars: ``approx_kl = 0.5 * mean((log_prob - old_log_prob)^2)`` (the second-order estimate of
        KL(old || new) used by DDPO), ``clipfrac = mean(|r - 1| > eps)`` and ``ratio_mean = mean(r)``.
    """
    old_log_prob = old_log_prob.detach()
    advantages = advantages.detach().to(log_prob.dtype)
    while advantages.ndim < log_prob.ndim:
        advantages = advantages.unsqueeze(-1)
    advantages = advantages.clamp(-adv_clip_max, adv_clip_max)

    log_ratio = log_prob - old_log_prob
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    # The pessimistic (larger) of the two losses: once the ratio leaves the trust region in the direction the
    # advantage rewards, the clipped term is constant and the gradient vanishes.
    loss = torch.maximum(unclipped, clipped).mean()

    with torch.no_grad():
        stats = {
            "approx_kl": 0.5 * (log_ratio**2).mean(),
            "clipfrac": ((ratio - 1.0).abs() > clip_range).float().mean(),
            "ratio_mean": ratio.mean(),
        }
    return loss, stats


def select_timesteps(
    num_steps: int,
    timestep_fraction: float,
    batch_size: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Step indices to train on: ``(batch_size, K)`` with ``K = int(num_steps * timestep_fraction)``.

    Each row is an independent random permutation of ``range(num_steps)`` truncated to ``K``, so every sample
    trains on its own random subset of distinct steps (DDPO's ``timestep_fraction``; 1.0 means all steps, in a
    random order per sample).
    """
    k = int(num_steps * timestep_fraction)
    if not 1 <= k <= num_steps:
        raise ValueError(f"int({num_steps} * {timestep_fraction}) = {k} steps; need between 1 and {num_steps}")
    return torch.stack([torch.randperm(num_steps, generator=generator)[:k] for _ in range(batch_size)])
