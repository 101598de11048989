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


class StepController:
    """A trust region on the policy step: adapt the learning rate so each optimizer step moves the policy by
    about ``target_kl``.

    After every optimizer step the caller measures ``KL(pi_before || pi_after)`` on a probe of the epoch's
    sampled transitions (both policies are DDIM Gaussians with the same ``sigma_t``, so the KL is the closed
    form of ``sampler.ddim_gaussian_kl``, a per-dimension mean like the log-probs) and passes it to
    :meth:`update`. For small steps the KL grows with the square of the step, and an Adam step is roughly
    proportional to the learning rate, so the full correction would be ``lr <- lr * sqrt(target_kl / kl)``. The
    measured KL of one step scatters over an order of magnitude around its trend (it depends on how the step's
    noisy direction meets the policy's sensitive directions), so the controller corrects by a share ``gain`` of
    that in log space, ``lr <- lr * (target_kl / kl) ** (gain / 2)``, at most ``max_factor`` per step: the rate
    follows the trend and the *geometric* mean of the step KL settles at the target. This makes LoRA and full
    fine-tuning (whose good learning rates differ by ~100x) take steps of the same size in policy space.
    The rate lives in the optimizer's ``param_groups``, so checkpoints restore it with the optimizer.
    """

    def __init__(self, target_kl: float, gain: float = 0.5, max_factor: float = 2.0):
        if target_kl <= 0:
            raise ValueError(f"target_kl must be > 0, got {target_kl}")
        if not 0 < gain <= 1:
            raise ValueError(f"gain must be in (0, 1], got {gain}")
        if max_factor <= 1:
            raise ValueError(f"max_factor must be > 1, got {max_factor}")
        self.target_kl = target_kl
        self.gain = gain
        self.max_factor = max_factor

    def factor(self, kl: float) -> float:
        """The learning-rate multiplier after a step that measured ``kl``."""
        if not kl > 0:  # no measurable move (or NaN): grow as fast as allowed
            return self.max_factor
        return min(max((self.target_kl / kl) ** (self.gain / 2), 1 / self.max_factor), self.max_factor)

    def update(self, optimizer: torch.optim.Optimizer, kl: float) -> float:
        """Scale every param group's ``lr`` by :meth:`factor`; returns the new lr of the first group."""
        f = self.factor(kl)
        for group in optimizer.param_groups:
            group["lr"] *= f
        return optimizer.param_groups[0]["lr"]
