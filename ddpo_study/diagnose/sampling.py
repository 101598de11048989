"""Sampling for a diagnosis: the base and the tuned model on the same prompts and seeds, cached by name.

:func:`prepare` loads the base pipeline, the tuned model (:func:`~ddpo_study.diagnose.loading.load_tuned`), the
reward and CLIP into a :class:`Diagnosis`; nothing is sampled until a measurement asks. Seeds come in two modes
(:data:`SEED_MODES`): the *same* seeds for every prompt, or a different seed per prompt.

Images are drawn the way the pipeline's family evaluates (:func:`ddpo_study.algorithm.family_for`): an SD-type
pipeline with our DDIM sampler (:func:`ddpo_study.sampler.sample_trajectories`), an SD3-type one with the stock
``StableDiffusion3Pipeline.__call__`` (its Euler ODE, per-image generators: ``FlowFamily.generate``), so in both an
image depends only on its prompt, seed and the weights, and a run's saved evals can be re-drawn.
:func:`sample_switched` is the combined sampler: one denoiser for the first ``k`` steps, another for the rest (for
SD3, :func:`sample_switched_flow`: the same ODE with the transformer swapped after step ``k``).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..config import EVAL_SEED_BASE, DDPOConfig
from ..images import to_uint8
from ..models import TOY_FLOW_DIR, TOY_MODEL_DIR, resolve_device, resolve_model
from ..rundir import read_config
from .loading import TunedModel, inspect_tuned, load_tuned

SEED_MODES = {"shared": "the same seeds for every prompt", "per_prompt": "a different seed per prompt"}


def is_flow_pipeline(pipe) -> bool:
    """An SD3-type pipeline (its denoiser is ``pipe.transformer``), sampled by the flow family."""
    return getattr(pipe, "unet", None) is None and getattr(pipe, "transformer", None) is not None


def base_denoiser(pipe):
    """The pipeline's own denoiser: ``pipe.unet``, or ``pipe.transformer`` for an SD3-type pipeline."""
    return pipe.transformer if is_flow_pipeline(pipe) else pipe.unet


@contextmanager
def _transformer_in(pipe, transformer):
    """``pipe.transformer`` replaced by ``transformer`` for the block (the stock ``__call__`` samples with it)."""
    own = pipe.transformer
    if transformer is None or transformer is own:
        yield
        return
    pipe.transformer = transformer
    try:
        yield
    finally:
        pipe.transformer = own


def _flow_settings(num_steps: int, guidance_scale: float, batch_size: int | None, n: int):
    """What ``FlowFamily.generate`` reads of a config: the eval steps, the guidance and the batch size."""
    from types import SimpleNamespace

    return SimpleNamespace(num_steps=int(num_steps), eval_num_steps=int(num_steps),
                           guidance_scale=float(guidance_scale), sample_batch_size=int(batch_size or n))


def sample_flow(pipe, transformer, prompts: Sequence[str], seeds: Sequence[int], num_inference_steps: int = 20,
                guidance_scale: float = 5.0, batch_size: int | None = None) -> torch.Tensor:
    """Images (B, 3, H, W) in [0, 1] of an SD3-type pipeline with ``transformer`` in place of its own: what a flow
    run's eval draws (``FlowFamily.generate``: the stock ``__call__``, one CPU generator per image)."""
    from ..flow_sampler import FlowFamily

    prompts, seeds = list(prompts), [int(s) for s in seeds]
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    with _transformer_in(pipe, transformer):
        return FlowFamily().generate(pipe, pipe.transformer, prompts, seeds,
                                     _flow_settings(num_inference_steps, guidance_scale, batch_size, len(prompts)))


def sample_switched_flow(pipe, first_transformer, rest_transformer, switch_at: int, prompts: Sequence[str],
                         seeds: Sequence[int], num_inference_steps: int = 20, guidance_scale: float = 5.0,
                         batch_size: int | None = None) -> torch.Tensor:
    """Images (B, 3, H, W) in [0, 1] of an SD3-type pipeline: ``first_transformer`` for the Euler ODE steps
    ``0 .. switch_at - 1``, ``rest_transformer`` after (the flow twin of :func:`sample_switched`).

    The stock ``StableDiffusion3Pipeline.__call__`` with per-image generators (:func:`sample_flow`), its transformer
    swapped by a ``callback_on_step_end`` at the end of step ``switch_at - 1``: the ODE's state is the latent alone,
    so nothing else changes hands. ``switch_at = 0`` reproduces ``rest_transformer``'s images and
    ``switch_at = num_inference_steps`` ``first_transformer``'s, bit for bit. Both must share dtype and device.
    """
    from ..sd3_padding import short_context_kwargs

    prompts, seeds = list(prompts), [int(s) for s in seeds]
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    if not 0 <= switch_at <= num_inference_steps:
        raise ValueError(f"switch_at must be in [0, {num_inference_steps}], got {switch_at}")
    own = pipe.transformer

    def switch(pipeline, step, timestep, tensors):
        if step == switch_at - 1:
            pipeline.transformer = rest_transformer
        return tensors

    settings = _flow_settings(num_inference_steps, guidance_scale, batch_size, len(prompts))
    chunk, out = settings.sample_batch_size, []
    try:
        for i in range(0, len(prompts), chunk):
            pipe.transformer = first_transformer if switch_at > 0 else rest_transformer
            # the context :func:`sample_flow` gives each transformer alone: the short one only if both run it
            context = short_context_kwargs(pipe, first_transformer, rest_transformer)
            generators = [torch.Generator().manual_seed(s) for s in seeds[i:i + chunk]]
            with torch.inference_mode():
                images = pipe(prompt=prompts[i:i + chunk], num_inference_steps=num_inference_steps,
                              guidance_scale=guidance_scale, generator=generators, output_type="pt",
                              return_dict=False, callback_on_step_end=switch, **context)[0]
            out.append(images.float().clone())
    finally:
        pipe.transformer = own
    return torch.cat(out)


def sample_switched(pipe, first_unet, rest_unet, switch_at: int, prompts: Sequence[str], seeds: Sequence[int],
                    num_inference_steps: int = 20, guidance_scale: float = 5.0, eta: float = 1.0,
                    batch_size: int | None = None) -> torch.Tensor:
    """Images (B, 3, H, W) in [0, 1]: ``first_unet`` for DDIM steps ``0 .. switch_at - 1``, ``rest_unet`` after.

    The same chain as :func:`ddpo_study.sampler.sample_trajectories` (per-image generators for the initial latent
    and every step's noise, :func:`~ddpo_study.sampler.guided_noise_pred`,
    :func:`~ddpo_study.sampler.ddim_step_with_logprob`), so ``switch_at = 0`` reproduces ``rest_unet``'s images and
    ``switch_at = num_inference_steps`` ``first_unet``'s, bit for bit at the same batching (other batch sizes
    agree to float rounding). Both UNets must share dtype and device. An SD3-type ``pipe`` (two transformers)
    goes to :func:`sample_switched_flow` (``eta`` does not apply to its ODE).
    """
    from diffusers.utils.torch_utils import randn_tensor

    if is_flow_pipeline(pipe):
        return sample_switched_flow(pipe, first_unet, rest_unet, switch_at, prompts, seeds, num_inference_steps,
                                    guidance_scale, batch_size)

    from ..sampler import ddim_step_with_logprob, encode_prompts, guided_noise_pred

    prompts, seeds = list(prompts), [int(s) for s in seeds]
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    if not 0 <= switch_at <= num_inference_steps:
        raise ValueError(f"switch_at must be in [0, {num_inference_steps}], got {switch_at}")
    scheduler = pipe.scheduler
    param = next(rest_unet.parameters())
    device, dtype = param.device, param.dtype
    chunk = batch_size or len(prompts)
    out = []
    with torch.inference_mode():
        scheduler.set_timesteps(num_inference_steps, device=device)
        negative = encode_prompts(pipe, [""]).to(device=device, dtype=dtype)
        for start in range(0, len(prompts), chunk):
            p, s = prompts[start:start + chunk], seeds[start:start + chunk]
            generators = [torch.Generator().manual_seed(seed) for seed in s]
            embeds = encode_prompts(pipe, p).to(device=device, dtype=dtype)
            neg = negative.repeat(len(p), 1, 1)
            size = rest_unet.config.sample_size
            latents = randn_tensor((len(p), rest_unet.config.in_channels, size, size), generator=generators,
                                   device=device, dtype=torch.float32)
            latents = (latents * scheduler.init_noise_sigma).to(dtype)
            for j, t in enumerate(scheduler.timesteps):
                unet = first_unet if j < switch_at else rest_unet
                noise_pred = guided_noise_pred(unet, latents, t, embeds, neg, guidance_scale)
                latents, _ = ddim_step_with_logprob(scheduler, noise_pred, t, latents, eta=eta, generator=generators)
            vae = pipe.vae
            decoded = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
            out.append((decoded.float() / 2 + 0.5).clamp(0, 1).cpu())
    return torch.cat(out)


@dataclass
class Diagnosis:
    """Everything a diagnosis compares; images and metrics are computed once and cached by name."""

    base_model: str
    pipe: Any  #: the base pipeline; ``pipe.unet`` (SD3-type: ``pipe.transformer``) is the base denoiser
    tuned: TunedModel
    prompts: list[str]
    num_seeds: int
    num_steps: int  #: DDIM steps; for an SD3-type pipeline, the Euler ODE's steps
    guidance_scale: float
    eta: float  #: DDIM eta (unused by an SD3-type pipeline's ODE)
    reward_name: str
    reward: Any  #: a :class:`ddpo_study.rewards.Reward`
    clip: Any  #: a :class:`ddpo_study.models.ClipScorer`
    batch_size: int = 64
    images: dict[str, np.ndarray] = field(default_factory=dict)  #: uint8 (P, S, H, W, 3) per name
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    rewards: dict[str, np.ndarray] = field(default_factory=dict)  #: float64 (P, S) per-image rewards per name
    _scratch: Any = None  # a plain denoiser for weight interpolation (full / progressive tuned models)

    @property
    def flow(self) -> bool:
        """An SD3-type base: images come from the stock pipeline's ODE (:func:`sample_flow`)."""
        return is_flow_pipeline(self.pipe)

    @property
    def base_denoiser(self):
        """The base pipeline's UNet, or its SD3 transformer."""
        return base_denoiser(self.pipe)

    @property
    def base_unet(self):  # the older name, kept for notebooks and scripts
        return self.base_denoiser

    def seeds(self, mode: str = "shared") -> np.ndarray:
        """(P, S) seeds: ``shared`` = ``EVAL_SEED_BASE + j`` for every prompt; ``per_prompt`` = distinct for all."""
        p, s = len(self.prompts), self.num_seeds
        if mode == "shared":
            return np.tile(EVAL_SEED_BASE + np.arange(s), (p, 1))
        if mode == "per_prompt":
            return EVAL_SEED_BASE + s + np.arange(p * s).reshape(p, s)
        raise ValueError(f"seed mode must be one of {list(SEED_MODES)}, got {mode!r}")

    def sample(self, name: str, unet=None, first_unet=None, switch_at: int = 0, seeds: str = "shared") -> np.ndarray:
        """uint8 images (P, S, H, W, 3) of all prompts x seeds, cached under ``name``.

        ``unet`` (a UNet, or an SD3 transformer) alone: :func:`~ddpo_study.sampler.sample_trajectories` (SD3:
        :func:`sample_flow`); with ``first_unet``: that one for the first ``switch_at`` steps (:func:`sample_switched`).
        """
        if name not in self.images:
            self.images[name] = self.draw(self.prompts, self.seeds(seeds), unet, first_unet, switch_at)
        return self.images[name]

    def draw(self, prompts: Sequence[str], seeds: np.ndarray, unet=None, first_unet=None,
             switch_at: int = 0) -> np.ndarray:
        """uint8 images (P, S, H, W, 3) of ``prompts`` with the (P, S) ``seeds``, at the diagnosis' sampling
        settings, not cached (:meth:`sample` names and keeps what a measurement reads)."""
        prompts, grid = list(prompts), np.asarray(seeds).reshape(len(prompts), -1)
        flat_p = [p for p in prompts for _ in range(grid.shape[1])]
        flat_s = [int(s) for s in grid.reshape(-1)]
        if first_unet is None and self.flow:
            images = sample_flow(self.pipe, unet, flat_p, flat_s, self.num_steps, self.guidance_scale,
                                 self.batch_size)
        elif first_unet is None:
            from ..sampler import sample_trajectories

            images = sample_trajectories(self.pipe, flat_p, flat_s, num_inference_steps=self.num_steps,
                                         guidance_scale=self.guidance_scale, eta=self.eta, unet=unet,
                                         batch_size=self.batch_size).images
        else:
            images = sample_switched(self.pipe, first_unet, unet, switch_at, flat_p, flat_s, self.num_steps,
                                     self.guidance_scale, self.eta, self.batch_size)
        arr = to_uint8(images)
        return arr.reshape(len(prompts), grid.shape[1], *arr.shape[1:])

    def measure(self, name: str) -> dict[str, float]:
        """Reward, diversity and retrieval of the cached images ``name`` (:func:`ddpo_study.metrics.compute_eval_metrics`),
        and on toy prompts the geometric judge's (:func:`ddpo_study.evaluation.judge_metrics`)."""
        if name not in self.metrics:
            from ..metrics import compute_eval_metrics, image_rewards

            images = self.images[name]
            rewards = image_rewards(images, self.prompts, self.reward, batch_size=self.batch_size)
            metrics = compute_eval_metrics(images, self.prompts, self.clip, rewards=rewards,
                                           batch_size=self.batch_size)
            from ..evaluation import judge_metrics
            from ..images import from_uint8

            metrics.update(judge_metrics(from_uint8(images), self.prompts))  # toy prompts only; {} otherwise
            self.metrics[name] = metrics
            self.rewards[name] = rewards.numpy()
        return self.metrics[name]

    def base(self, seeds: str = "shared") -> np.ndarray:
        return self.sample(f"base/{seeds}", unet=self.base_denoiser, seeds=seeds)

    def tuned_images(self, seeds: str = "shared") -> np.ndarray:
        return self.sample(f"tuned/{seeds}", unet=self.tuned.unet, seeds=seeds)

    @contextmanager
    def scaled(self, scale: float):
        """The tuned denoiser at ``scale`` (0 = base, 1 = tuned): the LoRA scaled (peft's adapter weight, for a UNet
        and an SD3 transformer alike), or the weights interpolated."""
        tuned = self.tuned
        if tuned.adapter is not None and tuned.lora_on_base:
            tuned.unet.set_adapters([tuned.adapter], weights=[float(scale)])
            try:
                yield tuned.unet
            finally:
                tuned.unet.set_adapters([tuned.adapter], weights=[1.0])
            return
        from ..finetune import effective_state_dict

        if self._scratch is None:
            self._scratch = copy.deepcopy(self.base_denoiser).eval().requires_grad_(False)
        base, target = effective_state_dict(self.base_denoiser), effective_state_dict(tuned.unet)
        state = {k: (b.float() + float(scale) * (target[k].float() - b.float())).to(b.dtype) for k, b in base.items()}
        self._scratch.load_state_dict(state, strict=False)
        yield self._scratch


def _default_prompts(base_model: str, run_config: dict | None) -> str:
    if run_config and run_config.get("eval_prompt_set"):
        return str(run_config["eval_prompt_set"])
    toys = (TOY_MODEL_DIR.resolve(), TOY_FLOW_DIR.resolve())
    toy = base_model in ("toy", "toy-flow") or Path(resolve_model(base_model)).resolve() in toys
    return "toy_eval" if toy else "sd_animals_30"


def run_sampling(run_config: dict, flow: bool) -> dict[str, Any]:
    """The sampling settings a run's evals used: ``num_steps`` (a flow run's ``eval_num_steps``, else its
    ``num_steps``), ``guidance_scale`` and, for DDIM, ``eta``; only those the config holds."""
    out = {k: run_config[k] for k in ("num_steps", "guidance_scale", "eta") if k in run_config}
    if flow:
        out.pop("eta", None)
        if run_config.get("eval_num_steps"):
            out["num_steps"] = run_config["eval_num_steps"]
    return out


def prepare(base_model: str | None, tuned: str | Path, prompts: str = "", reward: str = "", num_prompts: int = 16,
          num_seeds: int = 4, num_steps: int | None = None, guidance_scale: float | None = None,
          eta: float | None = None, device: str = "auto", clip_model: str = "", aesthetic_model: str = "",
          batch_size: int = 64) -> Diagnosis:
    """Load the base pipeline, the tuned model next to it, the reward and CLIP; nothing is sampled yet.

    Defaults (``None`` / ``""``): a run folder's own settings (model, reward, steps, guidance, eta, eval prompts,
    scorers; a flow run's eval steps); otherwise the :class:`~ddpo_study.config.DDPOConfig` defaults (20 steps,
    guidance 5, eta 1), the ``aesthetic`` reward and the prompts of :func:`_default_prompts`. An SD3-type base
    (``toy-flow``, an SD3 folder) is sampled by its stock pipeline's ODE (``eta`` unused).
    """
    from ..models import load_scorers
    from ..prompts import load_prompts
    from ..rewards import RewardContext, make_reward

    kind, path = inspect_tuned(tuned)  # fail on an unreadable path before loading models
    run_cfg = read_config(path) if kind == "run" else {}
    base_model = base_model or run_cfg.get("model") or "toy"
    prompt_list = load_prompts(prompts or _default_prompts(base_model, run_cfg))[:num_prompts]
    if len(prompt_list) < 2:
        raise ValueError("a diagnosis needs at least 2 prompts (cross-prompt diversity compares prompts)")
    if num_seeds < 1:
        raise ValueError(f"num_seeds must be >= 1, got {num_seeds}")
    dev = resolve_device(device)

    from ..models import load_pipeline

    pipe = load_pipeline(base_model, device=dev)
    defaults, ran = DDPOConfig(), run_sampling(run_cfg, is_flow_pipeline(pipe))
    pick = lambda given, key: given if given is not None else ran.get(key, getattr(defaults, key))  # noqa: E731
    tuned_model = load_tuned(path, base_denoiser(pipe))
    scorer_cfg = DDPOConfig(model=base_model, clip_model=clip_model or run_cfg.get("clip_model", ""),
                            aesthetic_model=aesthetic_model or run_cfg.get("aesthetic_model", ""))
    clip, aesthetic, _lpips, _warning = load_scorers(scorer_cfg, dev)
    reward_name = reward or run_cfg.get("reward") or "aesthetic"
    reward_fn = make_reward(reward_name, RewardContext(clip=clip, aesthetic=aesthetic, device=dev))
    return Diagnosis(base_model=str(base_model), pipe=pipe, tuned=tuned_model, prompts=prompt_list,
                     num_seeds=int(num_seeds), num_steps=int(pick(num_steps, "num_steps")),
                     guidance_scale=float(pick(guidance_scale, "guidance_scale")), eta=float(pick(eta, "eta")),
                     reward_name=reward_name, reward=reward_fn, clip=clip, batch_size=int(batch_size))


def describe(dx: Diagnosis) -> str:
    """One Markdown paragraph: what is compared, with which settings."""
    sampler = (f"the stock SD3 pipeline's Euler ODE, {dx.num_steps} steps" if dx.flow
               else f"DDIM {dx.num_steps} steps, eta {dx.eta:g}")
    return (f"**Base model:** `{dx.base_model}`. **Tuned model:** {dx.tuned.description}.  \n"
            f"**Prompts:** {len(dx.prompts)} (first: *{dx.prompts[0]}*), {dx.num_seeds} seeds each; "
            f"{sampler}, guidance {dx.guidance_scale:g}; reward `{dx.reward_name}`.")
