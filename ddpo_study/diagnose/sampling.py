"""Sampling for a diagnosis: the base and the tuned model on the same prompts and seeds, cached by name.

:func:`prepare` loads the base pipeline, the tuned model (:func:`~ddpo_study.diagnose.loading.load_tuned`), the
reward and CLIP into a :class:`Diagnosis`; nothing is sampled until a measurement asks. Seeds come in two modes
(:data:`SEED_MODES`): the *same* seeds for every prompt, or a different seed per prompt. :func:`sample_switched`
is the combined sampler: one UNet for the first ``k`` DDIM steps, another for the rest.
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
from ..models import TOY_MODEL_DIR, resolve_device, resolve_model
from ..rundir import read_config
from .loading import TunedModel, inspect_tuned, load_tuned

SEED_MODES = {"shared": "the same seeds for every prompt", "per_prompt": "a different seed per prompt"}


def sample_switched(pipe, first_unet, rest_unet, switch_at: int, prompts: Sequence[str], seeds: Sequence[int],
                    num_inference_steps: int = 20, guidance_scale: float = 5.0, eta: float = 1.0,
                    batch_size: int | None = None) -> torch.Tensor:
    """Images (B, 3, H, W) in [0, 1]: ``first_unet`` for DDIM steps ``0 .. switch_at - 1``, ``rest_unet`` after.

    The same chain as :func:`ddpo_study.sampler.sample_trajectories` (per-image generators for the initial latent
    and every step's noise, :func:`~ddpo_study.sampler.guided_noise_pred`,
    :func:`~ddpo_study.sampler.ddim_step_with_logprob`), so ``switch_at = 0`` reproduces ``rest_unet``'s images and
    ``switch_at = num_inference_steps`` ``first_unet``'s, bit for bit at the same batching (other batch sizes
    agree to float rounding). Both UNets must share dtype and device.
    """
    from diffusers.utils.torch_utils import randn_tensor

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
    pipe: Any  #: the base pipeline; ``pipe.unet`` is the base UNet
    tuned: TunedModel
    prompts: list[str]
    num_seeds: int
    num_steps: int
    guidance_scale: float
    eta: float
    reward_name: str
    reward: Any  #: a :class:`ddpo_study.rewards.Reward`
    clip: Any  #: a :class:`ddpo_study.models.ClipScorer`
    batch_size: int = 64
    images: dict[str, np.ndarray] = field(default_factory=dict)  #: uint8 (P, S, H, W, 3) per name
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    rewards: dict[str, np.ndarray] = field(default_factory=dict)  #: float64 (P, S) per-image rewards per name
    _scratch: Any = None  # a plain UNet for weight interpolation (full / progressive tuned models)

    @property
    def base_unet(self):
        return self.pipe.unet

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

        ``unet`` alone: :func:`~ddpo_study.sampler.sample_trajectories`; with ``first_unet``: that UNet for the first
        ``switch_at`` steps (:func:`sample_switched`).
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
        if first_unet is None:
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
        return self.sample(f"base/{seeds}", unet=self.base_unet, seeds=seeds)

    def tuned_images(self, seeds: str = "shared") -> np.ndarray:
        return self.sample(f"tuned/{seeds}", unet=self.tuned.unet, seeds=seeds)

    @contextmanager
    def scaled(self, scale: float):
        """The tuned UNet at ``scale`` (0 = base, 1 = tuned): the LoRA scaled, or the weights interpolated."""
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
            self._scratch = copy.deepcopy(self.base_unet).eval().requires_grad_(False)
        base, target = effective_state_dict(self.base_unet), effective_state_dict(tuned.unet)
        state = {k: (b.float() + float(scale) * (target[k].float() - b.float())).to(b.dtype) for k, b in base.items()}
        self._scratch.load_state_dict(state, strict=False)
        yield self._scratch


def _default_prompts(base_model: str, run_config: dict | None) -> str:
    if run_config and run_config.get("eval_prompt_set"):
        return str(run_config["eval_prompt_set"])
    toy = base_model == "toy" or Path(resolve_model(base_model)).resolve() == TOY_MODEL_DIR.resolve()
    return "toy_eval" if toy else "sd_animals_30"


def prepare(base_model: str | None, tuned: str | Path, prompts: str = "", reward: str = "", num_prompts: int = 16,
          num_seeds: int = 4, num_steps: int | None = None, guidance_scale: float | None = None,
          eta: float | None = None, device: str = "auto", clip_model: str = "", aesthetic_model: str = "",
          batch_size: int = 64) -> Diagnosis:
    """Load the base pipeline, the tuned model next to it, the reward and CLIP; nothing is sampled yet.

    Defaults (``None`` / ``""``): a run folder's own settings (model, reward, steps, guidance, eta, eval prompts,
    scorers); otherwise the :class:`~ddpo_study.config.DDPOConfig` defaults (20 steps, guidance 5, eta 1), the
    ``aesthetic`` reward and the prompts of :func:`_default_prompts`.
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
    defaults = DDPOConfig()
    pick = lambda given, key: given if given is not None else run_cfg.get(key, getattr(defaults, key))  # noqa: E731
    dev = resolve_device(device)

    from ..models import load_pipeline

    pipe = load_pipeline(base_model, device=dev)
    tuned_model = load_tuned(path, pipe.unet)
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
    return (f"**Base model:** `{dx.base_model}`. **Tuned model:** {dx.tuned.description}.  \n"
            f"**Prompts:** {len(dx.prompts)} (first: *{dx.prompts[0]}*), {dx.num_seeds} seeds each; "
            f"DDIM {dx.num_steps} steps, eta {dx.eta:g}, guidance {dx.guidance_scale:g}; reward `{dx.reward_name}`.")
