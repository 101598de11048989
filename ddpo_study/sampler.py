"""DDIM sampling that records what DDPO needs: every latent of the chain and the log-density of every step.

DDPO (Black et al., 2023, "Training Diffusion Models with Reinforcement Learning") treats denoising as an MDP
whose policy is the reverse step ``p_theta(x_{t-1} | x_t, c)``. With DDIM and ``eta > 0`` that step is Gaussian,

    x_{t-1} ~ N( mu_theta(x_t, t, c),  sigma_t^2 I ),      sigma_t = eta * sqrt(var(t, t_prev)),

so the policy-gradient ratio needs ``log p_theta(x_{t-1} | x_t, c)`` both when sampling (the "old" policy) and
again, with gradients, when training. This module computes both with one function, ``ddim_step_with_logprob``,
so the two can only agree.

Conventions used throughout:

* ``latents[:, j]`` is the input of step ``j`` (``j = 0`` is pure noise ``x_T``), ``latents[:, j + 1]`` its
  output, and ``timesteps[j]`` the UNet timestep of step ``j``. ``log_probs[:, j]`` scores that transition.
* Per-image seeds: image ``i`` draws its initial latent *and* the noise of each of its steps from its own
  ``torch.Generator().manual_seed(seeds[i])`` (a CPU generator, so the stream does not depend on the device).
  Hence an image depends only on ``(prompt, seed)``, never on which other images shared its batch; this is what
  lets us compare tuned and base models image by image at the same seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from diffusers import DDIMScheduler
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from .trajectory import LogProbOutput, Trajectory, _as_step_index, _module_device, _module_dtype, _per_sample

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


# --------------------------------------------------------------------------------------------------------------
# The DDIM step with its log-probability
# --------------------------------------------------------------------------------------------------------------


def ddim_mean_std(
    scheduler: DDIMScheduler, model_output: Tensor, timestep: int | Tensor, sample: Tensor, eta: float = 1.0
) -> tuple[Tensor, Tensor, Tensor]:
    """Steps 1-7 of :func:`ddim_step_with_logprob`: the Gaussian policy ``N(mu, sigma_t^2 I)`` of ``x_{t-1}``.

    Returns ``(mu, std, std_dev_t)`` in float32: ``mu`` shaped like ``sample``, ``std`` broadcastable to it and
    ``std_dev_t`` of shape ``(B,)``.
    """
    if not isinstance(scheduler, DDIMScheduler):
        raise TypeError(f"ddim_step_with_logprob needs a DDIMScheduler, got {type(scheduler).__name__}")
    if scheduler.num_inference_steps is None:
        raise ValueError("call scheduler.set_timesteps(num_inference_steps) first")
    device = sample.device
    batch_size, ndim = sample.shape[0], sample.ndim
    model_output = model_output.float()
    sample = sample.float()

    # 1. get previous step value (=t-1); per sample so that one call can mix timesteps.
    timestep = torch.as_tensor(timestep, device=device).long()
    if timestep.ndim == 0:
        timestep = timestep.expand(batch_size)
    if timestep.shape != (batch_size,):
        raise ValueError(f"timestep must be a scalar or shape ({batch_size},), got {tuple(timestep.shape)}")
    prev_timestep = timestep - scheduler.config.num_train_timesteps // scheduler.num_inference_steps

    # 2. compute alphas, betas (alpha_prod = \bar{alpha} in DDPM notation). Below t = 0 the scheduler uses
    #    final_alpha_cumprod, which is 1 when set_alpha_to_one=True and \bar{alpha}_0 otherwise.
    alphas_cumprod = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    final_alpha_cumprod = scheduler.final_alpha_cumprod.to(device=device, dtype=torch.float32)
    alpha_prod_t = alphas_cumprod[timestep]
    alpha_prod_t_prev = torch.where(
        prev_timestep >= 0, alphas_cumprod[prev_timestep.clamp(min=0)], final_alpha_cumprod
    )
    beta_prod_t = 1 - alpha_prod_t
    beta_prod_t_prev = 1 - alpha_prod_t_prev

    # 5. (computed early, per sample) variance "sigma_t(eta)^2 / eta^2" of DDIM eq. (16):
    #    sigma_t = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)
    variance = (beta_prod_t_prev / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)
    std_dev_t = eta * variance.sqrt()

    alpha_prod_t = _per_sample(alpha_prod_t, ndim)
    alpha_prod_t_prev = _per_sample(alpha_prod_t_prev, ndim)
    beta_prod_t = _per_sample(beta_prod_t, ndim)
    std = _per_sample(std_dev_t, ndim)

    # 3. compute predicted original sample ("predicted x_0", f_theta(x_t, t) of DDIM eq. (12)) and the
    #    predicted noise e_theta(x_t, t), for the scheduler's parameterisation.
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        pred_original_sample = (sample - beta_prod_t**0.5 * model_output) / alpha_prod_t**0.5
        pred_epsilon = model_output
    elif prediction_type == "sample":
        pred_original_sample = model_output
        pred_epsilon = (sample - alpha_prod_t**0.5 * pred_original_sample) / beta_prod_t**0.5
    elif prediction_type == "v_prediction":
        pred_original_sample = alpha_prod_t**0.5 * sample - beta_prod_t**0.5 * model_output
        pred_epsilon = alpha_prod_t**0.5 * model_output + beta_prod_t**0.5 * sample
    else:
        raise ValueError(f"unknown prediction_type {prediction_type!r}")

    # 4. clip or threshold "predicted x_0", as the scheduler would (SD's config has both off).
    if scheduler.config.thresholding:
        pred_original_sample = scheduler._threshold_sample(pred_original_sample)
    elif scheduler.config.clip_sample:
        r = scheduler.config.clip_sample_range
        pred_original_sample = pred_original_sample.clamp(-r, r)

    # 6. "direction pointing to x_t" of DDIM eq. (12). clamp(min=0) only guards eta > 1, where diffusers
    #    would return NaN.
    pred_sample_direction = (1 - alpha_prod_t_prev - std**2).clamp(min=0) ** 0.5 * pred_epsilon

    # 7. x_{t-1} without the random noise: the mean mu of the Gaussian policy.
    prev_sample_mean = alpha_prod_t_prev**0.5 * pred_original_sample + pred_sample_direction

    return prev_sample_mean, std, std_dev_t


def ddim_gaussian_kl(
    scheduler: DDIMScheduler, output_a: Tensor, output_b: Tensor, timestep: int | Tensor, sample: Tensor,
    eta: float = 1.0,
) -> Tensor:
    """KL( N(mu_a, sigma_t^2) || N(mu_b, sigma_t^2) ) of two models' DDIM steps from the same ``x_t``, ``(B,)``.

    Both policies share ``sigma_t`` (it depends on the schedule only), so the KL is exactly
    ``|mu_a - mu_b|^2 / (2 sigma_t^2)``, averaged over dimensions like the log-probs. This is the DPOK-style
    KL-to-base regulariser evaluated on the sampled states; 0 where ``sigma_t == 0``.
    """
    mu_a, std, std_dev_t = ddim_mean_std(scheduler, output_a, timestep, sample, eta)
    mu_b, _, _ = ddim_mean_std(scheduler, output_b, timestep, sample, eta)
    safe_std = torch.where(std > 0, std, torch.ones_like(std))
    kl = ((mu_a - mu_b) ** 2 / (2 * safe_std**2)).mean(dim=tuple(range(1, sample.ndim)))
    return torch.where(std_dev_t > 0, kl, torch.zeros_like(kl))


def ddim_kl_factor(scheduler: DDIMScheduler, timestep: Tensor, num_steps: int, eta: float = 1.0) -> Tensor:
    """``kappa_t``, ``(B,)``: :func:`ddim_gaussian_kl` of two outputs from one ``x_t`` is ``kappa_t * mean((o_a -
    o_b)^2)``, whatever ``x_t`` (DiffusionNFT's step probe, ``nft.ForwardStepProbe``, reads it).

    Given ``x_t`` the step's mean ``mu = sqrt(a_prev) * x0_hat + sqrt(1 - a_prev - sigma_t^2) * eps_hat`` is affine
    in the model output ``o`` (``a`` = ``alphas_cumprod``), with slope ``c_t = sqrt(a_prev) * dx0_hat/do +
    sqrt(1 - a_prev - sigma_t^2) * deps_hat/do``: for epsilon-prediction ``dx0_hat/do = -sqrt(1 - a_t) / sqrt(a_t)``
    and ``deps_hat/do = 1``. Both policies share ``sigma_t``, so ``KL = c_t^2 * mean(o_a - o_b)^2 / (2 sigma_t^2)``:
    ``kappa_t = c_t^2 / (2 sigma_t^2)``, 0 where ``sigma_t = 0``. ``timestep`` are the scheduler's timesteps of a
    ``num_steps`` schedule; clipping or thresholding ``x0_hat`` would break the affine map, so they are refused.
    """
    config = scheduler.config
    if config.thresholding or config.clip_sample:
        raise ValueError("ddim_kl_factor needs an unclipped x0 (clip_sample and thresholding off)")
    timestep = torch.as_tensor(timestep).long()
    alphas_cumprod = scheduler.alphas_cumprod.to(device=timestep.device, dtype=torch.float32)
    prev = timestep - config.num_train_timesteps // num_steps
    a_t = alphas_cumprod[timestep]
    a_prev = torch.where(prev >= 0, alphas_cumprod[prev.clamp(min=0)],
                         scheduler.final_alpha_cumprod.to(device=timestep.device, dtype=torch.float32))
    variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    std = eta * variance.sqrt()
    alpha, sigma = a_t.sqrt(), (1 - a_t).sqrt()
    # d x0_hat / d o and d eps_hat / d o of ddim_mean_std's step 3, per prediction type
    dx0, deps = {"epsilon": (-sigma / alpha, torch.ones_like(alpha)), "v_prediction": (-sigma, alpha),
                 "sample": (torch.ones_like(alpha), -alpha / sigma)}[config.prediction_type]
    slope = a_prev.sqrt() * dx0 + (1 - a_prev - std**2).clamp(min=0).sqrt() * deps
    safe_std = torch.where(std > 0, std, torch.ones_like(std))
    return torch.where(std > 0, slope**2 / (2 * safe_std**2), torch.zeros_like(std))


def ddim_step_with_logprob(
    scheduler: DDIMScheduler,
    model_output: Tensor,
    timestep: int | Tensor,
    sample: Tensor,
    eta: float = 1.0,
    prev_sample: Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> tuple[Tensor, Tensor]:
    """One DDIM step ``x_t -> x_{t-1}`` (as ``DDIMScheduler.step``) and ``log p(x_{t-1} | x_t)``.

    Args:
        scheduler: a ``DDIMScheduler`` on which ``set_timesteps`` has been called.
        model_output: the (guided) UNet output for ``sample``; interpreted by ``scheduler.config.prediction_type``
            (``"epsilon"``, ``"v_prediction"`` or ``"sample"``), exactly as diffusers does.
        timestep: ``t``; an int / 0-d tensor shared by the batch, or a ``(B,)`` tensor with one timestep per sample
            (training scores many (sample, step) pairs in one call).
        sample: ``x_t``, shape ``(B, C, h, w)``.
        eta: DDIM's ``eta``; ``sigma_t = eta * sqrt(var)``. ``eta = 1`` is DDPM-like ancestral sampling.
        prev_sample: if given, ``x_{t-1}`` to *score* (no noise is drawn and it is returned unchanged);
            otherwise ``x_{t-1}`` is sampled.
        generator: one ``torch.Generator`` or a list with one per sample, for the noise (see ``randn_tensor``).

    Returns:
        ``(prev_sample, log_prob)``: ``x_{t-1}`` in ``sample.dtype`` and a float32 ``(B,)`` tensor.

    ``log_prob`` is the Gaussian log-density of ``prev_sample`` under ``N(mu, sigma_t^2 I)`` **averaged** (not
    summed) over all non-batch dimensions, as DDPO does. It is therefore a per-dimension value, comparable across
    resolutions, and the PPO importance ratio built from it, ``exp(log_prob - old_log_prob)``, is the
    exponentiated *mean* per-dimension log-ratio (the ``D``-th root of the true density ratio, for ``D`` dims).

    Where ``sigma_t == 0`` the step is deterministic (``eta = 0``, or the last step when
    ``set_alpha_to_one=True``): a point mass has no density, so ``log_prob`` is defined as ``0`` there (no
    division by zero). Such steps then have ratio 1 and contribute no policy gradient.

    The arithmetic runs in float32 even for half inputs: the Gaussian density divides by ``sigma_t^2`` which can
    be small, and half precision would make the old and new log-probs disagree by rounding alone. Noise is drawn in
    float32 too, so a seed gives the same noise whatever the model dtype. For float32 inputs the result equals
    ``DDIMScheduler.step`` with ``use_clipped_model_output=False``.
    """
    out_dtype = sample.dtype
    prev_sample_mean, std, std_dev_t = ddim_mean_std(scheduler, model_output, timestep, sample, eta)
    device, ndim = sample.device, sample.ndim
    sample = sample.float()

    # 8. sample x_{t-1} = mu + sigma_t * z (diffusers draws z only when eta > 0; so do we, to keep the same
    #    generator stream), or take the given x_{t-1}.
    if prev_sample is None:
        prev_sample = prev_sample_mean
        if eta > 0:
            noise = randn_tensor(sample.shape, generator=generator, device=device, dtype=torch.float32)
            prev_sample = prev_sample_mean + std * noise
        prev_sample = prev_sample.to(out_dtype)

    # 9. log N(x_{t-1}; mu, sigma_t^2) per dimension, averaged over non-batch dims. We score the value actually
    #    returned (after any cast to out_dtype), so sampling and re-scoring the stored latents agree exactly.
    #    Where sigma_t == 0 the density is undefined: use a safe std of 1 and overwrite with 0.
    x = prev_sample.float()
    has_noise = std > 0
    safe_std = torch.where(has_noise, std, torch.ones_like(std))
    log_prob = -((x - prev_sample_mean) ** 2) / (2 * safe_std**2) - torch.log(safe_std) - _LOG_SQRT_2PI
    log_prob = log_prob.mean(dim=tuple(range(1, ndim)))
    log_prob = torch.where(std_dev_t > 0, log_prob, torch.zeros_like(log_prob))
    return prev_sample, log_prob


# --------------------------------------------------------------------------------------------------------------
# Text conditioning and the guided UNet call
# --------------------------------------------------------------------------------------------------------------


def encode_prompts(pipe, prompts: Sequence[str]) -> Tensor:
    """Text-encoder hidden states ``(B, L, D)`` for ``prompts``, tokenised exactly as ``StableDiffusionPipeline``."""
    tokens = pipe.tokenizer(
        list(prompts),
        padding="max_length",
        max_length=pipe.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    device = pipe.text_encoder.device
    # Like the pipeline, pass the attention mask only to encoders configured to use it (SD's CLIP is not).
    attention_mask = None
    if getattr(pipe.text_encoder.config, "use_attention_mask", False):
        attention_mask = tokens.attention_mask.to(device)
    return pipe.text_encoder(tokens.input_ids.to(device), attention_mask=attention_mask)[0]


def guided_noise_pred(
    unet,
    latents: Tensor,
    timesteps: int | Tensor,
    prompt_embeds: Tensor,
    negative_prompt_embeds: Tensor | None,
    guidance_scale: float,
) -> Tensor:
    """The UNet output with classifier-free guidance, as ``StableDiffusionPipeline`` computes it.

    With ``guidance_scale > 1`` the UNet runs once on the doubled batch ``[uncond; cond]`` and returns
    ``eps_u + w * (eps_c - eps_u)``; otherwise it runs once on the conditional batch only (the pipeline's
    ``do_classifier_free_guidance`` rule). ``timesteps`` is a scalar or a per-sample ``(B,)`` tensor.
    ``negative_prompt_embeds`` may have batch size 1 (broadcast) or B.
    """
    if guidance_scale <= 1.0:
        return unet(latents, timesteps, encoder_hidden_states=prompt_embeds, return_dict=False)[0]
    batch_size = latents.shape[0]
    negative_prompt_embeds = negative_prompt_embeds.expand(batch_size, -1, -1)
    timesteps = torch.as_tensor(timesteps, device=latents.device)
    if timesteps.ndim == 1:
        timesteps = torch.cat([timesteps, timesteps])
    noise_pred = unet(
        torch.cat([latents, latents]),
        timesteps,
        encoder_hidden_states=torch.cat([negative_prompt_embeds, prompt_embeds]),
        return_dict=False,
    )[0]
    noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
    return noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)


# --------------------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------------------


def _sample_batch(pipe, unet, prompts, seeds, num_inference_steps, guidance_scale, eta, progress_bar) -> Trajectory:
    scheduler = pipe.scheduler
    device, dtype = _module_device(unet), _module_dtype(unet)
    batch_size = len(prompts)
    # One CPU generator per image drives its initial latent and all its step noise (see module docstring).
    generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]

    with torch.inference_mode():
        scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = scheduler.timesteps
        prompt_embeds = encode_prompts(pipe, prompts).to(device=device, dtype=dtype)
        negative_prompt_embeds = encode_prompts(pipe, [""]).to(device=device, dtype=dtype)
        negative_prompt_embeds = negative_prompt_embeds.repeat(batch_size, 1, 1)

        size = unet.config.sample_size
        # Drawn in float32 then cast, so the same seed gives the same x_T whatever the model dtype.
        latents = randn_tensor(
            (batch_size, unet.config.in_channels, size, size), generator=generators, device=device,
            dtype=torch.float32,
        )
        latents = (latents * scheduler.init_noise_sigma).to(dtype)

        all_latents, all_log_probs = [latents], []
        for t in timesteps:
            # DDIMScheduler.scale_model_input is the identity, so the latents go to the UNet as they are.
            noise_pred = guided_noise_pred(unet, latents, t, prompt_embeds, negative_prompt_embeds, guidance_scale)
            latents, log_prob = ddim_step_with_logprob(scheduler, noise_pred, t, latents, eta=eta, generator=generators)
            all_latents.append(latents)
            all_log_probs.append(log_prob)
            if progress_bar is not None:
                progress_bar.update(1)

        vae = pipe.vae
        decoded = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        images = (decoded.float() / 2 + 0.5).clamp(0, 1)

    # Tensors made under inference_mode can never enter autograd ("inference tensors cannot be saved for
    # backward"); cloning outside it turns them into ordinary tensors that training can use freely.
    return Trajectory(
        prompts=list(prompts),
        seeds=[int(s) for s in seeds],
        latents=torch.stack(all_latents, dim=1).clone(),
        log_probs=torch.stack(all_log_probs, dim=1).clone(),
        timesteps=timesteps.clone(),
        prompt_embeds=prompt_embeds.clone(),
        negative_prompt_embeds=negative_prompt_embeds.clone(),
        images=images.clone(),
        guidance_scale=float(guidance_scale),
        eta=float(eta),
    )


def sample_trajectories(
    pipe,
    prompts: Sequence[str],
    seeds: Sequence[int],
    num_inference_steps: int = 20,
    guidance_scale: float = 5.0,
    eta: float = 1.0,
    unet=None,
    batch_size: int | None = None,
    progress: bool = False,
) -> Trajectory:
    """Sample one image per ``(prompt, seed)`` pair with DDIM and record the whole chain.

    Image ``i`` is a function of ``(prompts[i], seeds[i])`` and the weights only: its own generator drives its
    initial latent and all its step noise, so batch size, batch order and ``batch_size`` chunking do not change
    it. ``unet`` overrides ``pipe.unet`` (e.g. a LoRA-wrapped copy); ``pipe.scheduler`` must be a DDIMScheduler
    (SD ships PNDM; use ``DDIMScheduler.from_config(pipe.scheduler.config)``). Returns tensors on the UNet's
    device; the images are decoded once per chunk at the end.
    """
    prompts, seeds = list(prompts), list(seeds)
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    if not isinstance(pipe.scheduler, DDIMScheduler):
        raise TypeError("sample_trajectories needs pipe.scheduler to be a DDIMScheduler")
    unet = pipe.unet if unet is None else unet
    chunk = batch_size or len(prompts)

    progress_bar = None
    if progress:
        from tqdm.auto import tqdm

        n_chunks = math.ceil(len(prompts) / chunk)
        progress_bar = tqdm(total=n_chunks * num_inference_steps, desc="sampling", leave=False)
    try:
        parts = [
            _sample_batch(pipe, unet, prompts[i : i + chunk], seeds[i : i + chunk], num_inference_steps,
                          guidance_scale, eta, progress_bar)
            for i in range(0, len(prompts), chunk)
        ]
    finally:
        if progress_bar is not None:
            progress_bar.close()
    return parts[0] if len(parts) == 1 else Trajectory.cat(parts)


# --------------------------------------------------------------------------------------------------------------
# Re-scoring for training
# --------------------------------------------------------------------------------------------------------------


@dataclass
class TransitionOutputs:
    """The guided UNet output at stored transitions, with the inputs needed to turn it into a DDIM step."""

    noise_pred: Tensor  #: (B*K, C, h, w) guided model output at x_j
    sample: Tensor  #: (B*K, C, h, w) x_j
    prev_sample: Tensor  #: (B*K, C, h, w) x_{j+1}, the action that was taken
    timesteps: Tensor  #: (B*K,) UNet timestep of each transition
    shape: tuple[int, ...]  #: shape of per-transition results: (B,) for an int step index, else (B, K)


def transition_outputs(
    unet,
    scheduler: DDIMScheduler,
    trajectory: Trajectory,
    step_indices: int | Sequence[int] | Tensor,
    guidance_scale: float | None = None,
) -> TransitionOutputs:
    """Run ``unet`` (with guidance) on the chosen stored transitions of ``trajectory``, all in ONE call.

    ``step_indices`` is an int (one step for all samples), a ``(K,)`` sequence shared by all samples, or a
    ``(B, K)`` tensor of per-sample steps. The ``B*K`` (sample, step) pairs are flattened and scored with
    per-sample timesteps. Gradients flow if the caller allows them.
    """
    guidance_scale = trajectory.guidance_scale if guidance_scale is None else guidance_scale
    num_steps = trajectory.num_steps
    device = trajectory.latents.device
    if scheduler.num_inference_steps != num_steps:
        scheduler.set_timesteps(num_steps, device=device)
    if not torch.equal(scheduler.timesteps.cpu(), trajectory.timesteps.cpu()):
        raise ValueError("scheduler timesteps differ from the trajectory's; was it sampled with another config?")

    batch_size = len(trajectory)
    index, out_shape = _as_step_index(step_indices, batch_size)
    rows = torch.arange(batch_size).unsqueeze(1).expand_as(index).reshape(-1).to(device)
    steps = index.reshape(-1).to(device)
    if steps.min() < 0 or steps.max() >= num_steps:
        raise IndexError(f"step indices must lie in [0, {num_steps})")

    sample = trajectory.latents[rows, steps]  # x_j
    timesteps = trajectory.timesteps.to(device)[steps]
    noise_pred = guided_noise_pred(unet, sample, timesteps, trajectory.prompt_embeds[rows],
                                   trajectory.negative_prompt_embeds[rows], guidance_scale)
    return TransitionOutputs(noise_pred=noise_pred, sample=sample, prev_sample=trajectory.latents[rows, steps + 1],
                             timesteps=timesteps, shape=out_shape)


def recompute_log_probs(
    unet,
    scheduler: DDIMScheduler,
    trajectory: Trajectory,
    step_indices: int | Sequence[int] | Tensor,
    guidance_scale: float | None = None,
    eta: float | None = None,
    reference_unet=None,
) -> LogProbOutput:
    """``log p_theta(x_{j+1} | x_j)`` under the *current* UNet, with gradients, for the chosen steps.

    ``step_indices`` as in :func:`transition_outputs`; results are ``(B,)`` for an int, else ``(B, K)``
    aligned with ``step_indices``. All ``B*K`` (sample, step) pairs go through ONE UNet call (two-fold with
    guidance). The matching old log-probs are ``trajectory.log_probs.gather(1, index)``.
    ``guidance_scale``/``eta`` default to the sampling ones; with unchanged weights the result reproduces
    ``trajectory.log_probs`` (PPO ratio 1).

    With ``reference_unet`` (e.g. the frozen base model) ``kl`` holds the per-step ``KL(pi_theta || pi_ref)``
    at the same states (:func:`ddim_gaussian_kl`); the reference runs without gradients.
    """
    eta = trajectory.eta if eta is None else eta
    guidance_scale = trajectory.guidance_scale if guidance_scale is None else guidance_scale
    tr = transition_outputs(unet, scheduler, trajectory, step_indices, guidance_scale)
    _, log_prob = ddim_step_with_logprob(scheduler, tr.noise_pred, tr.timesteps, tr.sample, eta=eta,
                                         prev_sample=tr.prev_sample)
    if reference_unet is None:
        return LogProbOutput(log_prob.reshape(tr.shape))
    with torch.no_grad():
        reference = transition_outputs(reference_unet, scheduler, trajectory, step_indices, guidance_scale)
    kl = ddim_gaussian_kl(scheduler, tr.noise_pred, reference.noise_pred, tr.timesteps, tr.sample, eta=eta)
    return LogProbOutput(log_prob.reshape(tr.shape), kl.reshape(tr.shape))


# --------------------------------------------------------------------------------------------------------------
# The family behind the training loop's seam (``algorithm.SamplerFamily``)
# --------------------------------------------------------------------------------------------------------------


class DDIMFamily:
    """SD-type pipelines: an epsilon-prediction UNet sampled by DDIM with ``eta > 0``, each step a Gaussian.

    Training samples and eval images come from the same sampler (:func:`sample_trajectories`, per-image seeds),
    so a run's eval images are what stock diffusers makes with the run's adapter and a ``DDIMScheduler`` at the
    same ``eta``.
    """

    name = "ddim"

    def denoiser(self, pipe):
        return pipe.unet

    def sample(self, pipe, denoiser, prompts, seeds, cfg, progress: bool = False, epoch: int = 0) -> Trajectory:
        return sample_trajectories(pipe, prompts, seeds, num_inference_steps=cfg.num_steps,
                                   guidance_scale=cfg.guidance_scale, eta=cfg.eta, unet=denoiser,
                                   batch_size=cfg.sample_batch_size, progress=progress)

    def generate(self, pipe, denoiser, prompts, seeds, cfg) -> Tensor:
        return sample_trajectories(pipe, prompts, seeds, num_inference_steps=cfg.eval_num_steps or cfg.num_steps,
                                   guidance_scale=cfg.guidance_scale, eta=cfg.eta, unet=denoiser,
                                   batch_size=cfg.sample_batch_size).images

    def log_probs(self, denoiser, pipe, batch: Trajectory, step_index: Tensor, reference=None) -> LogProbOutput:
        return recompute_log_probs(denoiser, pipe.scheduler, batch, step_index, reference_unet=reference)

    def step_outputs(self, denoiser, pipe, batch: Trajectory, step_index: Tensor) -> Tensor:
        return transition_outputs(denoiser, pipe.scheduler, batch, step_index).noise_pred.float()

    def step_kl(self, pipe, batch: Trajectory, step_index: Tensor, before: Tensor, after: Tensor) -> Tensor:
        rows = torch.arange(len(batch)).unsqueeze(1).expand_as(step_index).reshape(-1)
        sample = batch.latents[rows, step_index.reshape(-1)]
        timesteps = batch.timesteps.to(sample.device)[step_index.reshape(-1)]
        return ddim_gaussian_kl(pipe.scheduler, before, after, timesteps, sample, eta=batch.eta)

    # --- the forward process, for objectives that train on it (DiffusionNFT, ``nft``) -------------------------
    # DDPM's x_t = alpha_t x_0 + sigma_t eps with alpha_t = sqrt(alphas_cumprod[t]), sigma_t = sqrt(1 - ...), at
    # the scheduler's integer timesteps; the output is read by ``prediction_type`` as ddim_mean_std reads it.

    def forward_coefficients(self, pipe, timesteps: Tensor) -> tuple[Tensor, Tensor]:
        """``(alpha_t, sigma_t)``, ``(N,)`` float32, of each timestep."""
        timesteps = torch.as_tensor(timesteps).long()
        a = pipe.scheduler.alphas_cumprod.to(device=timesteps.device, dtype=torch.float32)[timesteps]
        return a.sqrt(), (1 - a).sqrt()

    def forward_process(self, pipe, x0: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """``x_t = alpha_t x_0 + sigma_t noise`` in float32 (``DDIMScheduler.add_noise``)."""
        alpha, sigma = (_per_sample(c, x0.ndim) for c in self.forward_coefficients(pipe, timesteps))
        return alpha * x0.float() + sigma * noise.float()

    def target(self, pipe, x0: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """What the UNet predicts at ``x_t = forward_process(x0, noise, t)``: ``noise`` for epsilon-prediction,
        ``alpha_t noise - sigma_t x_0`` for v-prediction, ``x_0`` for sample-prediction."""
        alpha, sigma = (_per_sample(c, x0.ndim) for c in self.forward_coefficients(pipe, timesteps))
        kind = pipe.scheduler.config.prediction_type
        return {"epsilon": lambda: noise.float(), "v_prediction": lambda: alpha * noise.float() - sigma * x0.float(),
                "sample": lambda: x0.float()}[kind]()

    def x0_prediction(self, pipe, output: Tensor, x_t: Tensor, timesteps: Tensor) -> Tensor:
        """The ``x_0`` the output implies at ``x_t`` (``pred_original_sample`` of ddim_mean_std, unclipped)."""
        alpha, sigma = (_per_sample(c, x_t.ndim) for c in self.forward_coefficients(pipe, timesteps))
        kind = pipe.scheduler.config.prediction_type
        output, x_t = output.float(), x_t.float()
        return {"epsilon": lambda: (x_t - sigma * output) / alpha, "v_prediction": lambda: alpha * x_t - sigma * output,
                "sample": lambda: output}[kind]()

    def predict(self, denoiser, pipe, batch: Trajectory, rows: Tensor, x_t: Tensor, timesteps: Tensor,
                guidance_scale: float) -> Tensor:
        """The UNet output at ``x_t`` ``(N, C, h, w)`` for the prompts of ``batch[rows]`` at ``timesteps`` ``(N,)``,
        guided as the pipeline guides (``guidance_scale`` 1: the conditional output alone); float32."""
        rows = torch.as_tensor(rows, device=batch.prompt_embeds.device)
        return guided_noise_pred(denoiser, x_t.to(batch.latents.dtype), timesteps, batch.prompt_embeds[rows],
                                 batch.negative_prompt_embeds[rows], guidance_scale).float()

    def schedule(self, pipe, num_steps: int) -> Tensor:
        """The timesteps of a ``num_steps`` DDIM schedule (the pipeline's scheduler is left as it is)."""
        scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        scheduler.set_timesteps(num_steps)
        return scheduler.timesteps

    def kl_factor(self, pipe, timesteps: Tensor, num_steps: int, cfg) -> Tensor:
        """``kappa_t`` of the DDIM step at ``cfg.eta`` (DDPO's transition) from ``timesteps`` of a ``num_steps``
        schedule (:func:`ddim_kl_factor`): its KL from any ``x_t`` is ``kappa_t`` times the outputs' mean squared
        change."""
        return ddim_kl_factor(pipe.scheduler, timesteps, num_steps, cfg.eta)
