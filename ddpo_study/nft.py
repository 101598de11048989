"""DiffusionNFT (Zheng et al., ICLR 2026) behind the training loop's seam: reinforcement on the forward process.

Written from reading NVlabs/DiffusionNFT (``scripts/train_nft_sd3.py``, ``config/nft.py``): the same loss, r, weighting
and old-policy schedule, in our own code; what changed is said where it changed. One epoch:

1. **sample** each ``(prompt, seed)`` from the *old* policy ``theta_old`` with the deterministic solver (DDIM eta 0
   / the flow ODE: ``nft_sample_eta`` 0) at ``guidance_scale`` (1 = CFG-free, DiffusionNFT's setting);
2. **reward** -> the study's per-prompt-group advantage ``A`` (``train.compute_advantages``) -> the optimality
   probability ``r = clip( clip(A, -A_max, A_max) / (2 A_max) + 1/2, 0, 1 )``, ``A_max`` = ``adv_clip_max`` (5: ``r
   = A/10 + 1/2``). DiffusionNFT divides the group-centred reward by the whole batch's std (flow_grpo's
   ``global_std``); we keep the study's group std, so NFT and DDPO see the same advantages;
3. **loss** at ``K`` timesteps ``t`` of the sampler's schedule per sample (``nft_timesteps_per_sample``), each with
   fresh noise: ``x_t = alpha_t x_0 + sigma_t eps`` (the family's ``forward_process``), the network output ``o``
   (epsilon on the UNet toy, the velocity ``v = eps - x_0`` on the flow toy) of the policy, the old policy (no grad)
   and, with ``nft_kl_beta``, the reference (no grad), and

       o+ = beta o_theta + (1 - beta) o_old,        o- = (1 + beta) o_old - beta o_theta,
       L  = (A_max / beta) [ r l(o+) + (1 - r) l(o-) ]  +  nft_kl_beta mean((o_theta - o_ref)^2),

   ``l`` the weighted regression error of an output (below). At ``theta = theta_old`` the gradient is ``A grad
   l(o_theta)`` (``d l(o+-)/d theta = +-beta grad l``, ``2r - 1 = A/A_max``): an advantage-weighted regression,
   which is why DiffusionNFT scales by ``A_max / beta``;
4. **old policy** after the epoch's optimizer steps: ``old <- d old + (1 - d) theta`` with ``d = min(rate (s -
   flat), max)`` (0 before ``flat``), ``s`` the optimizer steps done (their ``return_decay``; type 1 = rate 0.001,
   max 0.5; type 2 = flat 75, rate 0.0075, max 0.999). ``old`` starts as the run's starting weights; it is a tensor
   copy of the trainable weights (LoRA: the adapter; full: every weight), swapped in to sample and to predict, and
   saved in the resume checkpoint. DiffusionNFT keeps it as a second LoRA adapter and evaluates an EMA of the
   policy; we evaluate the policy itself, as for DDPO.

**Epsilon, velocity and x0: the weighting.** Given ``x_t = alpha_t x_0 + sigma_t eps``, each parameterisation's
prediction is affine in every other's, so their errors are proportional with a factor that depends on ``t`` only:

    eps_hat - eps = -(alpha_t / sigma_t) (x0_hat - x_0),
    v_hat - v     = (eps_hat - eps) - (x0_hat - x_0) = -((alpha_t + sigma_t) / sigma_t) (x0_hat - x_0)
                  = (1 + sigma_t / alpha_t) (eps_hat - eps),

where ``v = eps - x_0`` is the rectified-flow velocity of ``x_t / (alpha_t + sigma_t) = (1 - s) x_0 + s eps``, ``s
= sigma_t / (alpha_t + sigma_t)`` (the flow toy's own coordinates: ``alpha = 1 - sigma``). Hence ``|v_hat - v|^2 =
(1 + sigma_t / alpha_t)^2 |eps_hat - eps|^2``: flow matching's plain loss weighs timestep ``t`` of a DDPM schedule
by ``(1 + sigma_t / alpha_t)^2`` relative to DDPM's plain epsilon loss (on SD's schedule 1.1 at t = 1, 6.9 at t =
500, ~240 at t = 999). The mixtures ``o+-`` have weights summing to 1, so they commute with these affine maps: the
implicit policies are the same whichever output the network has; only the weighting ``l`` can differ.
``nft_weighting`` picks it, all computed from ``x0_hat - x_0`` (the family's ``x0_prediction``):

* ``'adaptive'`` (default, DiffusionNFT's): ``l = |x0_hat - x_0|^2 / sg(mean|x0_hat - x_0|)`` per sample (``sg``:
  no gradient; floored at 1e-5). It lives in x0-space, so it is the *same number* for an epsilon UNet and a
  velocity transformer -- the two toys train one objective -- and it is self-normalising: a sample's gradient,
  ``2 (x0_hat - x_0) / mean|x0_hat - x_0|``, has the same size whatever ``t``'s SNR and the error's scale (in
  epsilon terms ``l = (sigma_t/alpha_t) |eps_hat - eps|^2 / mean|eps_hat - eps|``). This is why we use it: it is
  their choice, and it needs no per-family tuning.
* ``'velocity'``: ``|v_hat - v|^2`` (flow matching's loss; on the UNet ``(1 + sigma_t/alpha_t)^2 |eps_hat -
  eps|^2``), ``'epsilon'``: ``|eps_hat - eps|^2`` (DDPM's; on the flow ``(1 - sigma)^2 |v_hat - v|^2``).

**The policy step** (the step controller's measure, :class:`ForwardStepProbe`). NFT has no per-step log-prob, but
the study's step is the KL of a *Gaussian transition* between the policy before and after an optimizer step: DDPO's
DDIM step at ``eta`` (Flow-GRPO's SDE step at ``noise_level``) from a state ``x_t``. Both policies share the step's
std ``s_t`` and their means are affine in the output with one slope ``c_t``, so

    KL(pi_before || pi_after)(x_t) = c_t^2 / (2 s_t^2) mean((o_after - o_before)^2) = kappa_t mean(delta o^2)

for *any* ``x_t`` (``sampler.ddim_kl_factor``, ``flow_sampler.flow_kl_factor`` derive ``kappa_t``). NFT's step is
this, the mean squared change of the sampling policy's (guided) output weighted by ``kappa_t``, on 32 of the
epoch's samples noised by the forward process at a random timestep of a ``nft_probe_steps`` schedule -- exactly
DDPO's ``StepProbe`` number, measured at a forward-process state instead of a stored chain state (the two agree in
distribution when the model's marginals are those of the forward process of its own samples). So an NFT
``target_kl`` of 0.002 with ``nft_probe_steps`` 20 and ``eta`` 1 is DDPO v2's step per optimizer step. Keep the probe
schedule fixed when varying NFT's own ``num_steps``: ``kappa_t`` grows with coarser schedules (for a uniform change
of the output the mean ``kappa`` over SD's DDIM schedule is 1.0 at 20 steps, 4.0 at 10, 20 at 5).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from . import seeding
from .ppo import StepController, epoch_row, mean_over_processes, optimizer_step

#: Floor of the adaptive weighting's denominator (DiffusionNFT's ``clip(min=0.00001)``).
ADAPTIVE_FLOOR = 1e-5


# --------------------------------------------------------------------------------------------------------------
# The loss
# --------------------------------------------------------------------------------------------------------------


def optimality_probability(advantages: Tensor, adv_clip_max: float) -> Tensor:
    """``r = clip( clip(A, -A_max, A_max) / (2 A_max) + 1/2, 0, 1 )``: the probability that a sample is in the
    "positive" set, 1/2 for an average sample of its group."""
    a = torch.as_tensor(advantages).float().clamp(-adv_clip_max, adv_clip_max)
    return (a / (2 * adv_clip_max) + 0.5).clamp(0.0, 1.0)


def weighted_x0_loss(x0_error: Tensor, alpha: Tensor, sigma: Tensor, weighting: str = "adaptive") -> Tensor:
    """``l`` per sample ``(N,)`` from the x0-space error ``x0_hat - x_0`` ``(N, ...)`` at ``(alpha_t, sigma_t)``
    ``(N,)`` (module docstring): 'adaptive' ``|e|^2 / sg(mean|e|)``; 'epsilon' ``(alpha/sigma)^2 |e|^2 = |eps_hat -
    eps|^2``; 'velocity' ``((alpha + sigma)/sigma)^2 |e|^2 = |v_hat - v|^2``. Means over non-batch dimensions."""
    dims = tuple(range(1, x0_error.ndim))
    squared = x0_error.pow(2).mean(dim=dims)
    if weighting == "adaptive":
        return squared / x0_error.detach().abs().mean(dim=dims).clamp(min=ADAPTIVE_FLOOR)
    if weighting == "epsilon":
        return (alpha / sigma) ** 2 * squared
    if weighting == "velocity":
        return ((alpha + sigma) / sigma) ** 2 * squared
    raise ValueError(f"unknown NFT weighting {weighting!r}")


def nft_loss(family, pipe, pred: Tensor, pred_old: Tensor, x0: Tensor, x_t: Tensor, timesteps: Tensor, r: Tensor,
             beta: float = 1.0, weighting: str = "adaptive", adv_clip_max: float = 5.0) -> Tensor:
    """``(A_max / beta) [r l(o+) + (1 - r) l(o-)]`` per row ``(N,)``: ``pred`` the policy's output (with grad),
    ``pred_old`` the old policy's at the same ``x_t`` (treated as constant), ``r`` ``(N,)``, ``timesteps`` ``(N,)``,
    ``family`` the model's sampler family (its ``forward_coefficients`` and ``x0_prediction``)."""
    pred_old = pred_old.detach()
    positive = beta * pred + (1 - beta) * pred_old
    negative = (1 + beta) * pred_old - beta * pred
    alpha, sigma = family.forward_coefficients(pipe, timesteps)
    x0 = x0.float()
    loss_pos = weighted_x0_loss(family.x0_prediction(pipe, positive, x_t, timesteps) - x0, alpha, sigma, weighting)
    loss_neg = weighted_x0_loss(family.x0_prediction(pipe, negative, x_t, timesteps) - x0, alpha, sigma, weighting)
    return adv_clip_max / beta * (r * loss_pos + (1 - r) * loss_neg)


def old_decay(steps_done: int, rate: float, maximum: float, flat_steps: int = 0) -> float:
    """The old policy's soft-update decay after ``steps_done`` optimizer steps: ``min(rate (s - flat), max)``, 0
    before ``flat_steps`` (DiffusionNFT's ``return_decay``)."""
    return 0.0 if steps_done < flat_steps else min(rate * (steps_done - flat_steps), maximum)


@contextlib.contextmanager
def swapped_in(params: Sequence[torch.nn.Parameter], values: Sequence[Tensor]):
    """Run with ``values`` in ``params``' place (the old policy); their own values come back bit for bit after.
    Nothing may hold a graph through ``params`` across the swap (the callers predict without gradients inside)."""
    with torch.no_grad():
        saved = [p.detach().clone() for p in params]
        for p, v in zip(params, values):
            p.copy_(v)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, v in zip(params, saved):
                p.copy_(v)


# --------------------------------------------------------------------------------------------------------------
# The step probe
# --------------------------------------------------------------------------------------------------------------


class ForwardStepProbe:
    """NFT's step for the :class:`~ddpo_study.ppo.StepController`: ``KL(pi_before || pi_after)`` of DDPO's /
    Flow-GRPO's transition, ``kappa_t mean(delta o^2)`` (module docstring), at forward-process states.

    Up to 32 of the epoch's samples, each noised at one random timestep of the ``nft_probe_steps`` schedule
    (``num_steps`` if 0) with its own noise, all drawn from ``(seed, epoch)`` (``seeding.NFT_PROBE``; the same
    whatever the process count, a process measures those it holds). The output is the sampling policy's, guided at
    the batch's ``guidance_scale`` like DDPO's probe.
    """

    size = 32

    def __init__(self, cfg, family, pipe, batch, epoch: int, rank: int = 0, world: int = 1, sync=None):
        self.family, self.pipe, self.batch, self.sync = family, pipe, batch, sync
        num_steps = cfg.nft_probe_steps or cfg.num_steps
        schedule = family.schedule(pipe, num_steps)
        g = seeding.epoch_torch_generator(cfg.seed, epoch, seeding.NFT_PROBE)
        chosen = torch.randperm(cfg.samples_per_epoch, generator=g)[: self.size]
        steps = torch.randint(0, num_steps, (len(chosen),), generator=g)
        noise = torch.randn((len(chosen), *batch.latents.shape[2:]), generator=g)
        mine = chosen % world == rank  # global sample i lives on process i % world, at row i // world
        device = batch.latents.device
        self.rows = (chosen[mine] // world).to(device)
        self.timesteps = schedule[steps[mine]].to(device)
        self.x_t = family.forward_process(pipe, batch.latents[self.rows, -1], noise[mine].to(device), self.timesteps)
        self.kappa = family.kl_factor(pipe, self.timesteps, num_steps, cfg).to(device)

    @torch.no_grad()
    def outputs(self, denoiser) -> Tensor | None:
        """The sampling policy's output on the probe now (``None`` if this process holds none of it)."""
        if len(self.rows) == 0:
            return None
        denoiser.eval()
        out = self.family.predict(denoiser, self.pipe, self.batch, self.rows, self.x_t, self.timesteps,
                                  self.batch.guidance_scale)
        denoiser.train()
        return out

    def kl(self, before: Tensor | None, after: Tensor | None) -> float:
        """Mean KL per dimension over the probe's states (of all processes)."""
        if before is None:
            return mean_over_processes([], self.sync)
        kl = self.kappa * (after - before).pow(2).mean(dim=tuple(range(1, after.ndim)))
        return mean_over_processes(kl.double().cpu().tolist(), self.sync)


# --------------------------------------------------------------------------------------------------------------
# The objective
# --------------------------------------------------------------------------------------------------------------


class NFT:
    """DiffusionNFT's update (module docstring) with the study's process layout and step controller.

    Each pass (``inner_epochs``) draws one permutation of the epoch's samples, ``K`` distinct timesteps of the
    sampler's schedule per sample and their forward noise (``seeding.NFT_PASS``, the same on every process), and cuts
    the permutation into optimizer steps of ``train_batch_size x gradient_accumulation_steps`` samples, as
    :class:`~ddpo_study.ppo.PPO` does; a step's loss is the mean over its (sample, timestep) pairs (DiffusionNFT
    accumulates one backward per timestep, the same mean). After each step the :class:`ForwardStepProbe` measures
    the move and the controller (``target_kl``) adapts the learning rate; after the epoch the old policy is
    soft-updated.
    """

    name = "nft"
    STATS = ("loss", "policy_loss", "old_deviation", "kl_to_base", "grad_norm", "step_kl", "lr")

    def __init__(self, cfg, family):
        self.cfg, self.family = cfg, family
        self.controller = StepController(cfg.target_kl) if cfg.target_kl else None
        self.old: dict[str, Tensor] | None = None  #: parameter name -> the old policy's value

    # ----------------------------------------------------------------------------------------- old policy
    def _old_policy(self, state) -> tuple[list[torch.nn.Parameter], list[Tensor]]:
        """The trainable weights and the old policy's values for them (a copy of the weights the first time)."""
        names = {id(p): n for n, p in state.denoiser.named_parameters()}
        params = {names[id(p)]: p for p in state.policy.params}
        if self.old is None:
            self.old = {n: p.detach().clone() for n, p in params.items()}
        if self.old.keys() != params.keys():
            raise ValueError("NFT's old policy does not hold the run's trainable weights (another mode or LoRA?)")
        for n, p in params.items():  # a resumed copy comes from the CPU
            self.old[n] = self.old[n].to(device=p.device, dtype=p.dtype)
        return list(params.values()), [self.old[n] for n in params]

    @contextlib.contextmanager
    def sampling(self, state):
        """The epoch's samples: the old policy's weights, and its solver (``nft_sample_eta`` for the noise)."""
        params, old = self._old_policy(state)
        eta = self.cfg.nft_sample_eta
        with swapped_in(params, old):
            yield dataclasses.replace(state.cfg, eta=eta, noise_level=eta)

    def state_dict(self) -> dict[str, Tensor]:
        """The old policy, for the resume checkpoint."""
        return {f"old.{n}": t for n, t in (self.old or {}).items()}

    def load_state_dict(self, tensors: dict[str, Tensor]) -> None:
        old = {k.removeprefix("old."): v for k, v in tensors.items() if k.startswith("old.")}
        if not old:
            raise ValueError("the checkpoint holds no NFT old policy (objective.safetensors); it was not an NFT run")
        self.old = old

    # ----------------------------------------------------------------------------------------- the update
    def update(self, state, batch, advantages: np.ndarray, epoch: int) -> dict[str, float]:
        """The epoch's optimizer steps on ``batch`` (this process's share; ``advantages`` aligned with it), then the
        old policy's soft update; returns the epoch row's ``train_*`` columns."""
        cfg, denoiser, policy = self.cfg, state.denoiser, state.policy
        rank, world = state.rank_world
        sync = state.acc.reduce if world > 1 else None
        params, old = self._old_policy(state)
        device = batch.latents.device
        n, num_steps = len(batch) * world, batch.num_steps
        k = cfg.nft_timesteps_per_sample or num_steps
        per_step = cfg.train_batch_size * cfg.gradient_accumulation_steps
        r = optimality_probability(torch.as_tensor(advantages, device=device), cfg.adv_clip_max)
        x0 = batch.latents[:, -1].float()
        stats: dict[str, list[float]] = {s: [] for s in self.STATS}
        probe = ForwardStepProbe(cfg, self.family, state.pipe, batch, epoch, rank, world, sync)
        before = probe.outputs(denoiser)
        for inner in range(cfg.inner_epochs):
            g = seeding.epoch_torch_generator(cfg.seed, epoch, seeding.NFT_PASS + inner)  # same on all processes
            order = torch.randperm(n, generator=g)
            steps = torch.stack([torch.randperm(num_steps, generator=g)[:k] for _ in range(n)])  # (n, K), global
            noise = torch.randn((n, k, *x0.shape[1:]), generator=g)
            for s0 in range(0, n, per_step):
                step_samples = order[s0:s0 + per_step]
                mine = step_samples[step_samples % world == rank]  # global index i lives on process i % world
                for m0 in range(0, len(mine), cfg.train_batch_size):
                    idx = mine[m0:m0 + cfg.train_batch_size]
                    self._backward(state, batch, x0, r, idx // world, steps[idx], noise[idx],
                                   len(idx) / len(step_samples), params, old, stats)
                optimizer_step(policy, sync, cfg.max_grad_norm, stats)
                after = probe.outputs(denoiser)
                stats["step_kl"].append(probe.kl(before, after))
                if self.controller is not None:
                    self.controller.update(policy.optimizer, stats["step_kl"][-1])
                before = after
        denoiser.eval()
        decay = old_decay(epoch * cfg.inner_epochs * (cfg.samples_per_epoch // per_step), cfg.nft_decay_rate,
                          cfg.nft_decay_max, cfg.nft_decay_flat_steps)
        with torch.no_grad():
            for p, o in zip(params, old):
                o.mul_(decay).add_(p.detach(), alpha=1 - decay)
        return {**epoch_row(stats, policy, sync), "train_old_decay": decay}

    def _backward(self, state, batch, x0, r, rows, steps, noise, share, params, old, stats) -> None:
        """Accumulate one minibatch's gradient: the loss of its (sample, timestep) pairs, weighted by ``share``
        (in chunks of ``train_timesteps_per_pass`` timesteps, weighted so the gradient is the same)."""
        cfg, family, pipe, denoiser = self.cfg, self.family, state.pipe, state.denoiser
        device = batch.latents.device
        rows = rows.to(device)
        guidance = batch.guidance_scale if cfg.nft_guided else 1.0
        k_total = steps.shape[1]
        chunk = cfg.train_timesteps_per_pass or k_total
        for c0 in range(0, k_total, chunk):
            k = steps[:, c0:c0 + chunk]
            pair_rows = rows.repeat_interleave(k.shape[1])  # sample-major, as k.reshape(-1)
            t = batch.timesteps.to(device)[k.reshape(-1).to(device)]
            eps = noise[:, c0:c0 + chunk].reshape(-1, *x0.shape[1:]).to(device)
            x0_pairs = x0[pair_rows]
            x_t = family.forward_process(pipe, x0_pairs, eps, t)
            with state.acc.autocast():
                with torch.no_grad(), swapped_in(params, old):
                    pred_old = family.predict(denoiser, pipe, batch, pair_rows, x_t, t, guidance)
                pred = family.predict(denoiser, pipe, batch, pair_rows, x_t, t, guidance)
                reference = None
                if cfg.nft_kl_beta > 0:
                    with torch.no_grad():
                        reference = family.predict(state.policy.reference, pipe, batch, pair_rows, x_t, t, guidance)
            policy_loss = nft_loss(family, pipe, pred, pred_old, x0_pairs, x_t, t, r[pair_rows], cfg.nft_beta,
                                   cfg.nft_weighting, cfg.adv_clip_max).mean()
            loss = policy_loss
            if reference is not None:
                kl = (pred - reference).pow(2).mean()
                loss = loss + cfg.nft_kl_beta * kl
                stats["kl_to_base"].append(kl.item())
            (loss * (k.shape[1] / k_total) * share).backward()
            stats["loss"].append(loss.item())
            stats["policy_loss"].append(policy_loss.item())
            stats["old_deviation"].append((pred.detach() - pred_old).pow(2).mean().item())
