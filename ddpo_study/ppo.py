"""The PPO pieces of DDPO: the clipped surrogate loss and the random choice of timesteps to train on.

DDPO-IS (Black et al., 2023, eq. 5 with PPO's clipping) maximises, per denoising step of a sampled chain,

    E[ min( r * A,  clip(r, 1 - eps, 1 + eps) * A ) ],     r = p_theta(x_{t-1} | x_t, c) / p_old(x_{t-1} | x_t, c),

where ``A`` is the (normalised) reward of the whole image, shared by all its steps. We minimise the negative,
written as ``max(-A * r, -A * clip(r))``. Log-probs here are the per-dimension *means* of ``sampler``, so
``r = exp(log_prob - old_log_prob)`` is a per-dimension ratio; that is why DDPO's clip range is tiny (1e-4).

:class:`PPO` is the objective behind the training loop's seam (``algorithm.Objective``): the optimizer steps of
one epoch on any sampler family whose steps have a log-probability (DDIM today, the flow SDE next), each step
held to a size in policy space by the :class:`StepController`, which reads the :class:`StepProbe`.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from . import seeding


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
        KL(old || new) used by DDPO) and ``clipfrac = mean(|r - 1| > eps)``.
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


def train_steps(batch, cfg, n: int, generator: torch.Generator) -> Tensor:
    """The steps each of the epoch's ``n`` samples trains on (``select_timesteps``), among the batch's
    ``train_steps`` when it has them (Flow-GRPO-Fast: only its window of SDE steps has a log-prob)."""
    pool = getattr(batch, "train_steps", None)
    if pool is None:
        return select_timesteps(cfg.num_steps, cfg.timestep_fraction, n, generator=generator)
    return pool[select_timesteps(len(pool), cfg.timestep_fraction, n, generator=generator)]


class StepProbe:
    """What the :class:`StepController` reads: ``KL(pi_before || pi_after)`` of one optimizer step.

    It is measured on up to 32 of the epoch's samples, each at one random step, drawn from ``(seed, epoch)``
    over the whole epoch (the same whatever the process count; a process measures those it holds). A probe is
    enough: the KL is a mean over latent dimensions and transitions, and it costs two no-grad forward passes of
    32 transitions per optimizer step instead of passes over the whole batch. The KL is the family's closed form
    (two Gaussian steps from the same state, ``SamplerFamily.step_kl``).
    """

    size = 32

    def __init__(self, cfg, family, batch, epoch: int, rank: int = 0, world: int = 1, sync=None):
        self.family, self.sync = family, sync
        rows, self.steps = self.choose(cfg, epoch, rank, world)
        pool = getattr(batch, "train_steps", None)
        if pool is not None:  # only the window's steps are stochastic: measure the step there
            self.steps = pool[self.steps % len(pool)]
        self.batch = batch[rows]

    @classmethod
    def choose(cls, cfg, epoch: int, rank: int = 0, world: int = 1) -> tuple[Tensor, Tensor]:
        """The probe's transitions: (rows of this process's batch, ``(R, 1)`` step indices)."""
        g = seeding.epoch_torch_generator(cfg.seed, epoch, seeding.STEP_PROBE)
        chosen = torch.randperm(cfg.samples_per_epoch, generator=g)[: cls.size]
        steps = torch.randint(0, cfg.num_steps, (len(chosen), 1), generator=g)
        mine = chosen % world == rank  # global sample i lives on process i % world, at row i // world
        return chosen[mine] // world, steps[mine]

    @torch.no_grad()
    def outputs(self, denoiser, pipe) -> Tensor | None:
        """The policy's output on the probe now (``None`` if this process holds none of it)."""
        if len(self.batch) == 0:
            return None
        denoiser.eval()
        out = self.family.step_outputs(denoiser, pipe, self.batch, self.steps)
        denoiser.train()
        return out

    def kl(self, pipe, before: Tensor | None, after: Tensor | None) -> float:
        """Mean KL(pi_before || pi_after) per dimension over the probe's transitions (of all processes)."""
        if before is None:
            return mean_over_processes([], self.sync)
        kl = self.family.step_kl(pipe, self.batch, self.steps, before, after)
        return mean_over_processes(kl.double().cpu().tolist(), self.sync)


def mean_over_processes(values: list[float], sync) -> float:
    """The mean of every process's ``values`` together (processes may hold different numbers of minibatches)."""
    if sync is None:
        return float(np.mean(values))
    total = sync(torch.tensor([float(np.sum(values)), float(len(values))], dtype=torch.float64), "sum")
    return float(total[0] / total[1]) if total[1] > 0 else math.nan


class PPO:
    """DDPO's update (Black et al. 2023, Algorithm 1 step 4): PPO's clipped surrogate on per-step log-probs.

    Each pass over the epoch (``inner_epochs``) draws one permutation of the whole epoch's samples and one
    timestep subset per sample (the same on every process), and cuts the permutation into optimizer steps of
    ``train_batch_size x gradient_accumulation_steps`` samples. A process scores the samples of a step that it
    holds, in minibatches of at most ``train_batch_size``, each minibatch's (sample, timestep) pairs in one
    batched call (or in chunks of ``train_timesteps_per_pass`` timesteps, weighted so the gradient is the same).
    Each minibatch's mean loss is weighted by its share of the step's samples, and ``sync`` sums the processes'
    gradients, so a step's gradient is the mean over its samples whatever the process count. After each step
    the :class:`StepProbe` measures the policy's move (``train_step_kl``) and the controller (``target_kl``)
    adapts the learning rate from it. ``measure_step_kl=False`` (benchmarks only; no controller) skips the
    probe's extra forward passes.
    """

    name = "ppo"
    STATS = ("loss", "approx_kl", "clipfrac", "kl_to_base", "grad_norm", "step_kl", "lr")

    def __init__(self, cfg, family, measure_step_kl: bool = True):
        self.cfg, self.family = cfg, family
        self.controller = StepController(cfg.target_kl) if cfg.target_kl else None
        if self.controller is not None and not measure_step_kl:
            raise ValueError("the step controller needs the step KL: measure_step_kl must be True")
        self.measure_step_kl = measure_step_kl

    @contextlib.contextmanager
    def sampling(self, state):
        """The epoch's chains come from the current weights, sampled as the config says."""
        yield state.cfg

    def update(self, state, batch, advantages: np.ndarray, epoch: int) -> dict[str, float]:
        """The epoch's optimizer steps for a :class:`~ddpo_study.train.RunState` (see :meth:`steps`)."""
        rank, world = state.rank_world
        return self.steps(state.pipe, state.denoiser, state.policy, batch, advantages, epoch, rank=rank,
                          world=world, sync=state.acc.reduce if world > 1 else None, autocast=state.acc.autocast)

    def steps(self, pipe, denoiser, policy, batch, advantages, epoch: int, rank: int = 0, world: int = 1,
              sync: Callable | None = None, autocast=contextlib.nullcontext) -> dict[str, float]:
        """PPO's optimizer steps on ``batch`` (this process's share) with ``policy`` (``finetune.Policy``)."""
        cfg = self.cfg
        n = len(batch) * world
        per_step = cfg.train_batch_size * cfg.gradient_accumulation_steps
        adv = torch.as_tensor(advantages, dtype=torch.float32, device=batch.latents.device)
        stats: dict[str, list[float]] = {k: [] for k in self.STATS}
        probe = StepProbe(cfg, self.family, batch, epoch, rank, world, sync) if self.measure_step_kl else None
        before = probe.outputs(denoiser, pipe) if probe else None
        for inner in range(cfg.inner_epochs):
            g = seeding.epoch_torch_generator(cfg.seed, epoch, seeding.PPO_PASS + inner)  # same on all processes
            order = torch.randperm(n, generator=g)
            step_index = train_steps(batch, cfg, n, g)  # (n, K), by global index
            for s0 in range(0, n, per_step):
                step_samples = order[s0:s0 + per_step]
                mine = step_samples[step_samples % world == rank]  # global index i lives on process i % world
                for m0 in range(0, len(mine), cfg.train_batch_size):
                    global_idx = mine[m0:m0 + cfg.train_batch_size]
                    self._backward(pipe, denoiser, policy.reference, batch, adv, global_idx, world,
                                   step_index[global_idx], len(global_idx) / len(step_samples), autocast, stats)
                self._optimizer_step(policy, sync, stats)
                if probe is not None:
                    after = probe.outputs(denoiser, pipe)
                    stats["step_kl"].append(probe.kl(pipe, before, after))
                    if self.controller is not None:
                        self.controller.update(policy.optimizer, stats["step_kl"][-1])
                    before = after
        denoiser.eval()
        return epoch_row(stats, policy, sync)

    def _backward(self, pipe, denoiser, reference, batch, adv, global_idx, world, step_index, share, autocast,
                  stats) -> None:
        """Accumulate one minibatch's gradient: the loss of its (sample, timestep) pairs, weighted by ``share``."""
        cfg = self.cfg
        idx = global_idx // world  # position in this process's batch
        mb, mb_adv = batch[idx], adv[idx.to(adv.device)]
        k_total = step_index.shape[1]
        chunk = cfg.train_timesteps_per_pass or k_total
        for c0 in range(0, k_total, chunk):
            steps = step_index[:, c0:c0 + chunk]
            with autocast():
                out = self.family.log_probs(denoiser, pipe, mb, steps, reference=reference)
            old_log_prob = mb.log_probs.gather(1, steps.to(mb.log_probs.device))
            loss, st = clipped_surrogate_loss(out.log_prob, old_log_prob, mb_adv, cfg.clip_range, cfg.adv_clip_max)
            if out.kl is not None:
                loss = loss + cfg.kl_beta * out.kl.mean()
                stats["kl_to_base"].append(out.kl.mean().item())
            (loss * (steps.shape[1] / k_total) * share).backward()
            stats["loss"].append(loss.item())
            stats["approx_kl"].append(st["approx_kl"].item())
            stats["clipfrac"].append(st["clipfrac"].item())

    def _optimizer_step(self, policy, sync, stats) -> None:
        optimizer_step(policy, sync, self.cfg.max_grad_norm, stats)


def optimizer_step(policy, sync, max_grad_norm: float, stats: dict[str, list[float]]) -> None:
    """One optimizer step of ``policy`` on the accumulated gradients (summed over processes by ``sync``), clipped
    to ``max_grad_norm``; records ``grad_norm`` and ``lr`` in ``stats``."""
    if sync is not None:
        for p in policy.params:  # a process may hold none of a step's samples: it still joins the sum
            p.grad = torch.zeros_like(p) if p.grad is None else p.grad
            p.grad.copy_(sync(p.grad, "sum"))
    stats["grad_norm"].append(float(torch.nn.utils.clip_grad_norm_(policy.params, max_grad_norm)))
    stats["lr"].append(policy.optimizer.param_groups[0]["lr"])
    policy.optimizer.step()
    policy.optimizer.zero_grad(set_to_none=True)


def epoch_row(stats: dict[str, list[float]], policy, sync) -> dict[str, float]:
    """The epoch row's ``train_*`` columns: each stat's mean over the epoch (and processes), the optimizer steps
    taken and the learning rate the next epoch starts with."""
    row = {}
    for k, v in stats.items():  # every process reduces every stat (a local empty list must not skip a collective)
        mean = mean_over_processes(v, sync) if (v or sync is not None) else math.nan
        if not math.isnan(mean):
            row[f"train_{k}"] = mean
    row["train_optimizer_steps"] = len(stats["grad_norm"])
    row["learning_rate"] = policy.optimizer.param_groups[0]["lr"]  # the rate the next epoch starts with
    return row
