"""Flow-matching sampling with per-step log-probs: the SDE of Flow-GRPO (Liu et al. 2025) on SD3-type pipelines.

A rectified-flow model predicts the velocity ``v = eps - x_0`` of ``x_sigma = (1 - sigma) x_0 + sigma eps``
(``FlowMatchEulerDiscreteScheduler``'s convention: ``sigma`` runs from ~1 to 0 over the steps). Its deterministic
sampler, the Euler ODE step ``x <- x + v dt`` with ``dt = sigma_next - sigma < 0``, has no density, so Flow-GRPO
samples an SDE with the same marginals instead. With ``eps = x + (1 - sigma) v`` the score is
``-(x + (1 - sigma) v) / sigma``, and one Euler-Maruyama step of the reverse SDE with diffusion ``s_t`` is

    x_next = x (1 + s_t^2 dt / (2 sigma)) + v (1 + s_t^2 (1 - sigma) / (2 sigma)) dt + s_t sqrt(-dt) z,

    s_t = noise_level * sqrt(sigma / (1 - sigma)),

a Gaussian ``N(mu, (s_t sqrt(-dt))^2 I)``. At ``noise_level -> 0`` the mean is the Euler ODE step. We follow
flow_grpo's formulation so users can compare numbers with theirs: the log-density is *averaged* over latent
dimensions (as DDPO's), and at ``sigma = 1`` (the first step of an unshifted schedule, where ``s_t`` is infinite)
the denominator's ``1 - sigma`` uses the schedule's second sigma instead. Unlike flow_grpo, a ``noise_level`` of 0
is allowed: the step is the ODE step and its log-prob is 0 (no density, no policy gradient), as
``sampler.ddim_step_with_logprob`` does for ``eta = 0``.

Two policies' steps from the same state share ``s_t``, so their KL is ``|mu_a - mu_b|^2 / (2 (s_t sqrt(-dt))^2)``
per dimension (:func:`flow_gaussian_kl`): the step controller's measure and the KL-to-base term, as for DDIM.

Conventions as in :mod:`ddpo_study.sampler`: ``latents[:, j]`` is the input of step ``j``, ``log_probs[:, j]``
scores ``latents[:, j] -> latents[:, j + 1]``, and image ``i`` draws its initial latent and every step's noise
from its own ``torch.Generator().manual_seed(seeds[i])``, so it depends only on ``(prompt, seed)``.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Sequence

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from . import seeding
from .sd3_padding import short_context_kwargs
from .trajectory import LogProbOutput, Trajectory, _as_step_index, _module_device, _module_dtype, _per_sample

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


# --------------------------------------------------------------------------------------------------------------
# The SDE step with its log-probability
# --------------------------------------------------------------------------------------------------------------


def _step_sigmas(scheduler: FlowMatchEulerDiscreteScheduler, timestep, batch_size: int, device) -> tuple[Tensor, Tensor]:
    """``(sigma, sigma_next)`` of each sample's step, ``(B,)`` float32, from scheduler timesteps (``sigma * 1000``)."""
    if scheduler.timesteps is None or scheduler.sigmas is None:
        raise ValueError("call scheduler.set_timesteps(num_inference_steps) first")
    timestep = torch.as_tensor(timestep, device=device, dtype=torch.float32)
    if timestep.ndim == 0:
        timestep = timestep.expand(batch_size)
    if timestep.shape != (batch_size,):
        raise ValueError(f"timestep must be a scalar or shape ({batch_size},), got {tuple(timestep.shape)}")
    schedule = scheduler.timesteps.to(device=device, dtype=torch.float32)
    index = (timestep[:, None] - schedule[None, :]).abs().argmin(dim=1)  # the step each timestep belongs to
    if not torch.allclose(schedule[index], timestep, atol=1e-3):
        raise ValueError("a timestep is not one of the scheduler's; was set_timesteps called with another count?")
    sigmas = scheduler.sigmas.to(device=device, dtype=torch.float32)
    return sigmas[index], sigmas[index + 1]


def flow_sde_mean_std(
    scheduler: FlowMatchEulerDiscreteScheduler, model_output: Tensor, timestep, sample: Tensor,
    noise_level: float = 0.7,
) -> tuple[Tensor, Tensor, Tensor]:
    """The step's Gaussian: ``(prev_sample_mean, std, std_dev_t)`` in float32; ``std = std_dev_t * sqrt(-dt)``
    broadcastable to ``sample``, ``std_dev_t`` of shape ``(B,)`` (flow_grpo's ``std_dev_t``)."""
    batch_size, ndim = sample.shape[0], sample.ndim
    sigma, sigma_next = _step_sigmas(scheduler, timestep, batch_size, sample.device)
    sigma_max = scheduler.sigmas[1].to(device=sample.device, dtype=torch.float32)
    dt = sigma_next - sigma
    std_dev_t = torch.sqrt(sigma / (1 - torch.where(sigma == 1, sigma_max, sigma))) * noise_level
    s, d, sg = (_per_sample(v, ndim) for v in (std_dev_t, dt, sigma))
    x, v = sample.float(), model_output.float()
    mean = x * (1 + s**2 / (2 * sg) * d) + v * (1 + s**2 * (1 - sg) / (2 * sg)) * d
    return mean, s * torch.sqrt(-d), std_dev_t


def flow_sde_step_with_logprob(
    scheduler: FlowMatchEulerDiscreteScheduler,
    model_output: Tensor,
    timestep,
    sample: Tensor,
    noise_level: float = 0.7,
    prev_sample: Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One SDE step ``x_sigma -> x_sigma_next`` and its log-density; returns flow_grpo's
    ``(prev_sample, log_prob, prev_sample_mean, std_dev_t)``.

    ``model_output`` is the (guided) velocity at ``sample``; ``timestep`` a scheduler timestep (scalar or one per
    sample); with ``prev_sample`` the step is scored, not drawn. ``log_prob`` is ``(B,)`` float32, averaged over
    non-batch dimensions; 0 where the step has no noise (``noise_level = 0``). ``prev_sample`` keeps
    ``sample``'s dtype and is scored as returned, so sampling and re-scoring agree exactly.
    """
    out_dtype = sample.dtype
    mean, std, std_dev_t = flow_sde_mean_std(scheduler, model_output, timestep, sample, noise_level)
    if prev_sample is None:
        prev_sample = mean
        if noise_level > 0:
            noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=torch.float32)
            prev_sample = mean + std * noise
        prev_sample = prev_sample.to(out_dtype)
    x = prev_sample.detach().float()
    has_noise = std > 0
    safe_std = torch.where(has_noise, std, torch.ones_like(std))
    log_prob = -((x - mean) ** 2) / (2 * safe_std**2) - torch.log(safe_std) - _LOG_SQRT_2PI
    log_prob = log_prob.mean(dim=tuple(range(1, sample.ndim)))
    log_prob = torch.where(std_dev_t > 0, log_prob, torch.zeros_like(log_prob))
    return prev_sample, log_prob, mean, std_dev_t


def flow_gaussian_kl(
    scheduler: FlowMatchEulerDiscreteScheduler, output_a: Tensor, output_b: Tensor, timestep, sample: Tensor,
    noise_level: float = 0.7,
) -> Tensor:
    """``KL(N(mu_a, std^2) || N(mu_b, std^2))`` of two models' SDE steps from the same ``sample``, ``(B,)``,
    averaged over dimensions like the log-probs; 0 where the step has no noise."""
    mu_a, std, std_dev_t = flow_sde_mean_std(scheduler, output_a, timestep, sample, noise_level)
    mu_b, _, _ = flow_sde_mean_std(scheduler, output_b, timestep, sample, noise_level)
    safe_std = torch.where(std > 0, std, torch.ones_like(std))
    kl = ((mu_a - mu_b) ** 2 / (2 * safe_std**2)).mean(dim=tuple(range(1, sample.ndim)))
    return torch.where(std_dev_t > 0, kl, torch.zeros_like(kl))


def flow_kl_factor(scheduler: FlowMatchEulerDiscreteScheduler, timestep, noise_level: float = 0.7) -> Tensor:
    """``kappa_t``, ``(B,)``: :func:`flow_gaussian_kl` of two velocities from one ``x`` is ``kappa_t * mean((v_a -
    v_b)^2)``, whatever ``x`` (DiffusionNFT's step probe, ``nft.ForwardStepProbe``, reads it).

    The SDE step's mean is affine in ``v`` with slope ``c = (1 + s_t^2 (1 - sigma) / (2 sigma)) dt`` and both
    policies share ``std = s_t sqrt(-dt)``, so ``kappa_t = c^2 / (2 std^2) = (1 + s_t^2 (1 - sigma) / (2 sigma))^2
    (-dt) / (2 s_t^2)``; with ``s_t = a sqrt(sigma / (1 - sigma))`` (``a`` = ``noise_level``) that is ``(1 + a^2/2)^2
    (-dt) (1 - sigma) / (2 a^2 sigma)`` away from ``sigma = 1``. 0 where the step has no noise. ``timestep`` must be
    of the scheduler's current schedule (as for :func:`flow_sde_mean_std`, whose ``s_t`` this repeats).
    """
    timestep = torch.as_tensor(timestep, dtype=torch.float32)
    sigma, sigma_next = _step_sigmas(scheduler, timestep.reshape(-1), timestep.numel(), timestep.device)
    sigma_max = scheduler.sigmas[1].to(device=timestep.device, dtype=torch.float32)
    dt = sigma_next - sigma
    s = torch.sqrt(sigma / (1 - torch.where(sigma == 1, sigma_max, sigma))) * noise_level
    slope = (1 + s**2 * (1 - sigma) / (2 * sigma)) * dt
    var = s**2 * -dt
    safe_var = torch.where(var > 0, var, torch.ones_like(var))
    return torch.where(var > 0, slope**2 / (2 * safe_var), torch.zeros_like(var))


# --------------------------------------------------------------------------------------------------------------
# Conditioning and the guided transformer call
# --------------------------------------------------------------------------------------------------------------


def encode_sd3_prompts(pipe, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
    """``(prompt_embeds, pooled_prompt_embeds)`` for ``prompts`` as ``StableDiffusion3Pipeline`` makes them (both
    CLIP encoders, and T5 or its zero padding when the pipeline has none; that padding as the one weighted token of
    :mod:`~ddpo_study.sd3_padding` when the pipeline was prepared for it, which computes the same)."""
    embeds, _, pooled, _ = pipe.encode_prompt(prompt=list(prompts), prompt_2=None, prompt_3=None,
                                              device=_module_device(pipe.transformer),
                                              do_classifier_free_guidance=False, **short_context_kwargs(pipe))
    return embeds, pooled


def guided_velocity(transformer, latents: Tensor, timesteps, prompt_embeds: Tensor, pooled: Tensor,
                    negative_prompt_embeds: Tensor | None, negative_pooled: Tensor | None,
                    guidance_scale: float) -> Tensor:
    """The transformer's velocity with classifier-free guidance, as ``StableDiffusion3Pipeline`` computes it
    (one call on ``[uncond; cond]`` when ``guidance_scale > 1``). ``timesteps``: scalar or ``(B,)``."""
    batch_size = latents.shape[0]
    timesteps = torch.as_tensor(timesteps, device=latents.device)
    if timesteps.ndim == 0:
        timesteps = timesteps.expand(batch_size)
    if guidance_scale <= 1.0:
        return transformer(hidden_states=latents, timestep=timesteps, encoder_hidden_states=prompt_embeds,
                           pooled_projections=pooled, return_dict=False)[0]
    out = transformer(hidden_states=torch.cat([latents, latents]), timestep=torch.cat([timesteps, timesteps]),
                      encoder_hidden_states=torch.cat([negative_prompt_embeds.expand(batch_size, -1, -1),
                                                       prompt_embeds]),
                      pooled_projections=torch.cat([negative_pooled.expand(batch_size, -1), pooled]),
                      return_dict=False)[0]
    uncond, cond = out.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


# --------------------------------------------------------------------------------------------------------------
# Sampling and re-scoring
# --------------------------------------------------------------------------------------------------------------


def sample_flow_trajectories(pipe, prompts: Sequence[str], seeds: Sequence[int], num_inference_steps: int = 10,
                             guidance_scale: float = 4.5, noise_level: float = 0.7, transformer=None,
                             batch_size: int | None = None, sde_steps: Sequence[int] | None = None) -> Trajectory:
    """One SDE chain per ``(prompt, seed)`` with per-step log-probs (Flow-GRPO's training samples).

    ``sde_steps`` (Flow-GRPO-Fast): only these steps are SDE steps; the others are the ODE's (no noise, log-prob
    0), and the trajectory's ``train_steps`` says which may train. None: every step is an SDE step.
    """
    prompts, seeds = list(prompts), list(seeds)
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    if not isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler):
        raise TypeError("sample_flow_trajectories needs a FlowMatchEulerDiscreteScheduler")
    transformer = pipe.transformer if transformer is None else transformer
    chunk = batch_size or len(prompts)
    window = None if sde_steps is None else sorted(int(j) for j in sde_steps)
    if window is not None and not (window and 0 <= window[0] and window[-1] < num_inference_steps):
        raise ValueError(f"sde_steps {window} must be steps of the {num_inference_steps}-step chain")
    parts = [_sample_flow_batch(pipe, transformer, prompts[i:i + chunk], seeds[i:i + chunk], num_inference_steps,
                                guidance_scale, noise_level, window) for i in range(0, len(prompts), chunk)]
    traj = parts[0] if len(parts) == 1 else Trajectory.cat(parts)
    return traj if window is None else replace(traj, train_steps=torch.tensor(window, dtype=torch.long))


def _sample_flow_batch(pipe, transformer, prompts, seeds, num_inference_steps, guidance_scale,
                       noise_level, window=None) -> Trajectory:
    scheduler = pipe.scheduler
    device, dtype = _module_device(transformer), _module_dtype(transformer)
    generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
    with torch.inference_mode():
        scheduler.set_timesteps(num_inference_steps, device=device)
        embeds, pooled = (t.to(device=device, dtype=dtype) for t in encode_sd3_prompts(pipe, prompts))
        neg, neg_pooled = (t.to(device=device, dtype=dtype).repeat(len(prompts), *[1] * (t.ndim - 1))
                           for t in encode_sd3_prompts(pipe, [""]))
        size = transformer.config.sample_size
        latents = randn_tensor((len(prompts), transformer.config.in_channels, size, size), generator=generators,
                               device=device, dtype=torch.float32).to(dtype)
        all_latents, all_log_probs = [latents], []
        for j, t in enumerate(scheduler.timesteps):
            v = guided_velocity(transformer, latents, t, embeds, pooled, neg, neg_pooled, guidance_scale)
            level = noise_level if window is None or j in window else 0.0  # outside the window: the ODE step
            latents, log_prob, _, _ = flow_sde_step_with_logprob(scheduler, v, t, latents, level,
                                                                 generator=generators)
            all_latents.append(latents)
            all_log_probs.append(log_prob)
        images = decode_sd3_latents(pipe, latents)
    # clones outside inference mode: training may use these tensors in autograd
    return Trajectory(prompts=list(prompts), seeds=[int(s) for s in seeds],
                      latents=torch.stack(all_latents, dim=1).clone(), log_probs=torch.stack(all_log_probs, 1).clone(),
                      timesteps=scheduler.timesteps.clone(), prompt_embeds=embeds.clone(),
                      negative_prompt_embeds=neg.clone(), images=images.clone(), guidance_scale=float(guidance_scale),
                      eta=float(noise_level), pooled_prompt_embeds=pooled.clone(),
                      negative_pooled_prompt_embeds=neg_pooled.clone())


def decode_sd3_latents(pipe, latents: Tensor) -> Tensor:
    """Images ``(B, 3, H, W)`` in [0, 1] from SD3 latents (the pipeline's un-scaling: ``z / scale + shift``)."""
    vae = pipe.vae
    z = latents.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
    return (vae.decode(z, return_dict=False)[0].float() / 2 + 0.5).clamp(0, 1)


def _flow_transition_outputs(transformer, scheduler, trajectory: Trajectory, step_indices):
    """The guided velocity at the chosen stored transitions (all in one call), with their inputs."""
    index, out_shape = _as_step_index(step_indices, len(trajectory))
    device = trajectory.latents.device
    rows = torch.arange(len(trajectory)).unsqueeze(1).expand_as(index).reshape(-1).to(device)
    steps = index.reshape(-1).to(device)
    current = scheduler.timesteps
    if (current is None or current.shape != trajectory.timesteps.shape
            or not torch.allclose(current.cpu().float(), trajectory.timesteps.cpu().float())):
        scheduler.set_timesteps(trajectory.num_steps, device=device)  # e.g. an eval at other steps came between
    sample = trajectory.latents[rows, steps]
    timesteps = trajectory.timesteps.to(device)[steps]
    v = guided_velocity(transformer, sample, timesteps, trajectory.prompt_embeds[rows],
                        trajectory.pooled_prompt_embeds[rows], trajectory.negative_prompt_embeds[rows],
                        trajectory.negative_pooled_prompt_embeds[rows], trajectory.guidance_scale)
    return v, sample, trajectory.latents[rows, steps + 1], timesteps, out_shape


def recompute_flow_log_probs(transformer, scheduler, trajectory: Trajectory, step_indices,
                             reference=None) -> LogProbOutput:
    """``log p_theta`` of stored SDE transitions under the current transformer (with gradients), and the KL to
    ``reference`` at the same states when given (see :func:`sampler.recompute_log_probs`)."""
    v, sample, prev, timesteps, shape = _flow_transition_outputs(transformer, scheduler, trajectory, step_indices)
    _, log_prob, _, _ = flow_sde_step_with_logprob(scheduler, v, timesteps, sample, trajectory.eta,
                                                   prev_sample=prev)
    if reference is None:
        return LogProbOutput(log_prob.reshape(shape))
    with torch.no_grad():
        v_ref = _flow_transition_outputs(reference, scheduler, trajectory, step_indices)[0]
    kl = flow_gaussian_kl(scheduler, v, v_ref, timesteps, sample, trajectory.eta)
    return LogProbOutput(log_prob.reshape(shape), kl.reshape(shape))


# --------------------------------------------------------------------------------------------------------------
# The family behind the training loop's seam (``algorithm.SamplerFamily``)
# --------------------------------------------------------------------------------------------------------------


def sde_window(cfg, epoch: int) -> range | None:
    """Flow-GRPO-Fast's SDE steps in epoch ``epoch``: ``cfg.sde_window`` consecutive steps starting at a step drawn
    uniformly from the run's ``SDE_WINDOW`` stream (the same on every process); None when ``sde_window`` is 0."""
    size = getattr(cfg, "sde_window", 0)
    if not size:
        return None
    start = int(seeding.epoch_rng(cfg.seed, epoch, seeding.SDE_WINDOW).integers(0, cfg.num_steps - size + 1))
    return range(start, start + size)


class FlowFamily:
    """SD3-type pipelines: a rectified-flow transformer, trained on the SDE's steps, evaluated on the ODE.

    Training samples are SDE chains at ``cfg.num_steps`` with ``cfg.noise_level`` (flow_grpo: 10 steps, 0.7);
    eval images are what the stock ``StableDiffusion3Pipeline`` makes at ``cfg.eval_num_steps`` (its Euler ODE,
    per-image generators), so stock diffusers plus a run's adapter reproduces the run's eval images.
    """

    name = "flow"

    def denoiser(self, pipe):
        return pipe.transformer

    def sample(self, pipe, denoiser, prompts, seeds, cfg, progress: bool = False, epoch: int = 0) -> Trajectory:
        return sample_flow_trajectories(pipe, prompts, seeds, num_inference_steps=cfg.num_steps,
                                        guidance_scale=cfg.guidance_scale, noise_level=cfg.noise_level,
                                        transformer=denoiser, batch_size=cfg.sample_batch_size,
                                        sde_steps=sde_window(cfg, epoch))

    def generate(self, pipe, denoiser, prompts, seeds, cfg) -> Tensor:
        if denoiser is not pipe.transformer:
            raise ValueError("FlowFamily.generate samples through the pipeline: pass pipe.transformer")
        steps = cfg.eval_num_steps or cfg.num_steps
        chunk = cfg.sample_batch_size
        images = []
        for i in range(0, len(prompts), chunk):
            gens = [torch.Generator().manual_seed(int(s)) for s in seeds[i:i + chunk]]
            with torch.inference_mode():
                out = pipe(prompt=list(prompts[i:i + chunk]), num_inference_steps=steps,
                           guidance_scale=cfg.guidance_scale, generator=gens, output_type="pt", return_dict=False,
                           **short_context_kwargs(pipe))
            images.append(out[0].float().clone())
        # the pipeline leaves its scheduler at the eval step count; training resets it per batch
        return torch.cat(images)

    def log_probs(self, denoiser, pipe, batch: Trajectory, step_index: Tensor, reference=None) -> LogProbOutput:
        return recompute_flow_log_probs(denoiser, pipe.scheduler, batch, step_index, reference=reference)

    def step_outputs(self, denoiser, pipe, batch: Trajectory, step_index: Tensor) -> Tensor:
        return _flow_transition_outputs(denoiser, pipe.scheduler, batch, step_index)[0].float()

    def step_kl(self, pipe, batch: Trajectory, step_index: Tensor, before: Tensor, after: Tensor) -> Tensor:
        rows = torch.arange(len(batch)).unsqueeze(1).expand_as(step_index).reshape(-1)
        steps = step_index.reshape(-1)
        sample = batch.latents[rows, steps]
        return flow_gaussian_kl(pipe.scheduler, before, after, batch.timesteps.to(sample.device)[steps], sample,
                                batch.eta)

    # --- the forward process, for objectives that train on it (DiffusionNFT, ``nft``) -------------------------
    # Rectified flow: x_sigma = (1 - sigma) x_0 + sigma eps, sigma = timestep / num_train_timesteps (the scheduler's
    # timesteps are its sigmas times 1000), and the transformer predicts v = eps - x_0.

    def forward_coefficients(self, pipe, timesteps: Tensor) -> tuple[Tensor, Tensor]:
        """``(alpha_t, sigma_t) = (1 - sigma, sigma)``, ``(N,)`` float32, of each timestep."""
        sigma = torch.as_tensor(timesteps).float() / pipe.scheduler.config.num_train_timesteps
        return 1 - sigma, sigma

    def forward_process(self, pipe, x0: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """``x_sigma = (1 - sigma) x_0 + sigma noise`` in float32 (``FlowMatchEulerDiscreteScheduler.scale_noise``)."""
        alpha, sigma = (_per_sample(c, x0.ndim) for c in self.forward_coefficients(pipe, timesteps))
        return alpha * x0.float() + sigma * noise.float()

    def target(self, pipe, x0: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """The velocity ``noise - x_0`` (the same at every timestep)."""
        return noise.float() - x0.float()

    def x0_prediction(self, pipe, output: Tensor, x_t: Tensor, timesteps: Tensor) -> Tensor:
        """The ``x_0`` a velocity implies at ``x_sigma``: ``x_sigma - sigma v``."""
        _, sigma = self.forward_coefficients(pipe, timesteps)
        return x_t.float() - _per_sample(sigma, x_t.ndim) * output.float()

    def predict(self, denoiser, pipe, batch: Trajectory, rows: Tensor, x_t: Tensor, timesteps: Tensor,
                guidance_scale: float) -> Tensor:
        """The velocity at ``x_t`` ``(N, C, h, w)`` for the prompts of ``batch[rows]`` at ``timesteps`` ``(N,)``,
        guided as the pipeline guides (``guidance_scale`` 1: the conditional velocity alone); float32."""
        rows = torch.as_tensor(rows, device=batch.prompt_embeds.device)
        return guided_velocity(denoiser, x_t.to(batch.latents.dtype), timesteps, batch.prompt_embeds[rows],
                               batch.pooled_prompt_embeds[rows], batch.negative_prompt_embeds[rows],
                               batch.negative_pooled_prompt_embeds[rows], guidance_scale).float()

    def schedule(self, pipe, num_steps: int) -> Tensor:
        """The timesteps of a ``num_steps`` schedule (the pipeline's scheduler is left as it is)."""
        return self._scheduler(pipe, num_steps).timesteps

    def kl_factor(self, pipe, timesteps: Tensor, num_steps: int, cfg) -> Tensor:
        """``kappa_t`` of the SDE step at ``cfg.noise_level`` (Flow-GRPO's transition) from ``timesteps`` of a
        ``num_steps`` schedule (:func:`flow_kl_factor`): its KL from any ``x`` is ``kappa_t`` times the velocities'
        mean squared change."""
        return flow_kl_factor(self._scheduler(pipe, num_steps), timesteps, cfg.noise_level)

    @staticmethod
    def _scheduler(pipe, num_steps: int) -> FlowMatchEulerDiscreteScheduler:
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
        scheduler.set_timesteps(num_steps)
        return scheduler
