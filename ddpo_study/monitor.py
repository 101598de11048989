"""Watch prompt-following while any trainer runs: the study's collapse measures of a diffusers pipeline at fixed
prompts and seeds, and the verdict against the base model's (huggingface/trl#2113: after RL fine-tuning, different
prompts give near-identical images).

A :class:`Monitor` holds what must stay fixed between two readings (prompts, seeds, an image embedder, sampling
settings, optionally a reward). :meth:`Monitor.measure` samples the pipeline (or a given UNet/transformer in its
place), and returns a :class:`Reading`: cross-prompt distance, prompt retrieval, within-prompt diversity, the
reward if one was given, the geometric judge on toy prompts, and against the reference (:meth:`Monitor.set_reference`,
the base model's reading) the verdict of :func:`ddpo_study.collapse.lost_prompts` — the one rule the study applies.

Images are drawn with one generator per image (seeded by its seed alone), so an image depends only on its prompt,
seed and the weights, and a reading compares with the reference image by image. SD-type pipelines with a DDIM
scheduler go through :func:`ddpo_study.sampler.sample_trajectories` (the sampler the study's evals use, so a
reading of a run's adapter at its eval prompts and seeds gives its ``metrics.csv`` values); any other pipeline
(another scheduler; an SD3-type pipeline, whose denoiser is ``transformer``) through its own ``__call__``.
"""

from __future__ import annotations

import inspect
import json
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .collapse import KEPT, collapse_kind, lost_prompts

#: Sampling paths of :meth:`Monitor.sample`: ``ddim`` is our sampler, ``pipeline`` the pipeline's ``__call__``.
SAMPLERS = ("auto", "ddim", "pipeline")
#: The judge's reading shown in a summary line (toy prompts only): every attribute right.
JUDGE_KEY = "judge_all"


def _sampling_default(name: str):
    """The study's sampling settings (one home: :class:`ddpo_study.config.DDPOConfig`)."""
    from .config import DDPOConfig

    return DDPOConfig.__dataclass_fields__[name].default


@dataclass
class Reading:
    """One :meth:`Monitor.measure`: the metrics of a model's images at the monitor's prompts and seeds, and the
    verdict against a reference reading (``base``) when there is one."""

    name: str
    metrics: dict[str, float]  #: :func:`ddpo_study.metrics.compute_eval_metrics` keys, plus ``judge_*`` on the toy
    images: np.ndarray | None = field(default=None, repr=False)  #: uint8 (prompts, seeds, H, W, 3)
    rewards: np.ndarray | None = field(default=None, repr=False)  #: float64 (prompts, seeds), with a reward
    base: dict[str, float] | None = field(default=None, repr=False)  #: the reference's metrics
    reward_z: float = math.nan  #: paired reward change vs the reference, z clustered by prompt

    @property
    def cross_prompt(self) -> float:
        """Cross-prompt CLIP cosine distance at the same seed (~0: every prompt gives the same image)."""
        return self.metrics["cross_div_clip"]

    @property
    def retrieval(self) -> float:
        """Fraction of images whose most CLIP-similar prompt is their own (chance: 1 / prompts)."""
        return self.metrics["retrieval_acc"]

    @property
    def within_prompt(self) -> float:
        return self.metrics["within_div_clip"]

    @property
    def reward(self) -> float:
        return self.metrics.get("reward_mean", math.nan)

    @property
    def judge(self) -> dict[str, float]:
        return {k: v for k, v in self.metrics.items() if k.startswith("judge_")}

    @property
    def diversity_ratio(self) -> float:
        """Cross-prompt distance / the reference's (NaN without one)."""
        base = (self.base or {}).get("cross_div_clip", math.nan)
        return self.cross_prompt / base if base else math.nan

    @property
    def retrieval_drop(self) -> float:
        """Reference retrieval - this retrieval (NaN without a reference)."""
        return (self.base or {}).get("retrieval_acc", math.nan) - self.retrieval

    @property
    def lost(self) -> bool | None:
        """The stop rule (:func:`ddpo_study.collapse.lost_prompts`); None without a reference."""
        if self.base is None:
            return None
        return lost_prompts(self.diversity_ratio, self.retrieval_drop)

    @property
    def kind(self) -> str:
        """:func:`ddpo_study.collapse.collapse_kind`: kept, maximised, broke or no reward change ("" w/o reference)."""
        return collapse_kind(self.diversity_ratio, self.retrieval_drop, self.reward_z) if self.base else ""

    def summary(self) -> str:
        """One line: ``<name>: prompts being lost — cross-prompt 0.91 of base, retrieval 1.00 → 0.84``."""
        m, b = self.metrics, self.base
        if b is None:
            text = (f"{self.name}: cross-prompt {self.cross_prompt:.3f}, retrieval {self.retrieval:.2f} (chance "
                    f"{m['retrieval_chance']:.2f}), within-prompt {self.within_prompt:.3f}")
            text += f", reward {self.reward:.3g}" if math.isfinite(self.reward) else ""
            return text + (f", judge all-correct {m[JUDGE_KEY]:.2f}" if JUDGE_KEY in m else "")
        state = "prompts being lost" if self.lost else "prompts kept"
        text = (f"{self.name}: {state} — cross-prompt {self.diversity_ratio:.2f} of base, retrieval "
                f"{b['retrieval_acc']:.2f} → {self.retrieval:.2f}")
        if math.isfinite(self.reward) and "reward_mean" in b:
            text += f"; reward {b['reward_mean']:.3g} → {self.reward:.3g}"
            if self.lost and self.kind not in ("", KEPT):
                text += f" ({self.kind})"
        if JUDGE_KEY in m and JUDGE_KEY in b:
            text += f"; judge all-correct {b[JUDGE_KEY]:.2f} → {m[JUDGE_KEY]:.2f}"
        return text

    def save(self, path: str | Path) -> Path:
        """An ``.npz`` holding the images, rewards and metrics (what a restarted watcher reads back as its base)."""
        from .atomic import atomic_path

        extra = {} if self.rewards is None else {"rewards": np.asarray(self.rewards, dtype=np.float64)}
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez_compressed(tmp, images=self.images, name=np.array(self.name),
                                metrics=np.array(json.dumps(self.metrics)), **extra)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "Reading":
        with np.load(path, allow_pickle=False) as data:
            return cls(name=str(data["name"]), metrics=json.loads(str(data["metrics"])), images=data["images"],
                       rewards=data["rewards"] if "rewards" in data else None)


def _as_reward_fn(reward: Callable | None) -> Callable | None:
    """The study's reward signature ``fn(images, prompts) -> (rewards, info)`` from a callable that returns either
    that pair or the rewards alone (a user's own reward)."""
    if reward is None:
        return None

    def fn(images, prompts):
        out = reward(images, prompts)
        return out if isinstance(out, tuple) else (out, {})

    return fn


@contextmanager
def _denoiser_in(pipe, attr: str, denoiser):
    """``pipe.<attr>`` replaced by ``denoiser`` for the block (the pipeline's ``__call__`` has no such argument)."""
    own = getattr(pipe, attr)
    if denoiser is None or denoiser is own:
        yield
        return
    setattr(pipe, attr, denoiser)
    try:
        yield
    finally:
        setattr(pipe, attr, own)


@dataclass
class Monitor:
    """Fixed prompts, seeds and image embedder; :meth:`measure` reads a model, :meth:`set_reference` fixes the base.

    ``clip``: a :class:`ddpo_study.models.ClipScorer` (:func:`ddpo_study.models.load_clip`); ``seeds``: a number
    (``EVAL_SEED_BASE + j``, the study's eval seeds) or the seeds themselves, the same for every prompt;
    ``reward``: ``fn(images (B, 3, H, W) in [0, 1], prompts) -> rewards`` or ``(rewards, info)``, optional;
    ``sampler``: one of :data:`SAMPLERS` (``auto``: ours for a UNet pipeline with a DDIM scheduler).
    """

    prompts: Sequence[str]
    clip: Any
    seeds: int | Sequence[int] = 4
    reward: Callable | None = None
    num_steps: int = field(default_factory=lambda: _sampling_default("num_steps"))
    guidance_scale: float = field(default_factory=lambda: _sampling_default("guidance_scale"))
    eta: float = field(default_factory=lambda: _sampling_default("eta"))
    batch_size: int = 32
    sampler: str = "auto"
    reference: Reading | None = None
    _reference_embeds: torch.Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        from .evaluation import eval_seeds

        self.prompts = list(self.prompts)
        self.seeds = eval_seeds(self.seeds) if isinstance(self.seeds, int) else [int(s) for s in self.seeds]
        if len(self.prompts) < 2:
            raise ValueError("the monitor needs at least 2 prompts (cross-prompt distance compares prompts)")
        if not self.seeds:
            raise ValueError("the monitor needs at least 1 seed")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        self._reward_fn = _as_reward_fn(self.reward)

    # ------------------------------------------------------------------------------------------------ sampling
    def _path(self, pipe) -> str:
        from diffusers import DDIMScheduler

        if self.sampler != "auto":
            return self.sampler
        return "ddim" if hasattr(pipe, "unet") and isinstance(pipe.scheduler, DDIMScheduler) else "pipeline"

    def sample(self, pipe, denoiser=None) -> torch.Tensor:
        """Images (prompts, seeds, 3, H, W) in [0, 1] on the CPU; ``denoiser`` (a UNet or transformer, e.g. a
        LoRA-wrapped copy) in place of the pipeline's own."""
        flat_p = [p for p in self.prompts for _ in self.seeds]  # prompt-major, as the metrics expect
        flat_s = [s for _ in self.prompts for s in self.seeds]
        if self._path(pipe) == "ddim":
            from .sampler import sample_trajectories

            images = sample_trajectories(pipe, flat_p, flat_s, num_inference_steps=self.num_steps,
                                         guidance_scale=self.guidance_scale, eta=self.eta, unet=denoiser,
                                         batch_size=self.batch_size).images
        else:
            images = self._sample_by_call(pipe, denoiser, flat_p, flat_s)
        return images.float().cpu().reshape(len(self.prompts), len(self.seeds), *images.shape[1:])

    def _sample_by_call(self, pipe, denoiser, prompts: list[str], seeds: list[int]) -> torch.Tensor:
        attr = "unet" if hasattr(pipe, "unet") else "transformer"
        takes_eta = "eta" in inspect.signature(pipe.__call__).parameters  # SD's DDIM eta; flow pipelines have none
        extra = {"eta": self.eta} if takes_eta else {}
        out = []
        with _denoiser_in(pipe, attr, denoiser), torch.inference_mode():
            for i in range(0, len(prompts), self.batch_size):
                chunk = seeds[i:i + self.batch_size]
                generators = [torch.Generator().manual_seed(s) for s in chunk]  # CPU: the same noise on any device
                result = pipe(prompt=prompts[i:i + self.batch_size], generator=generators, output_type="pt",
                              num_inference_steps=self.num_steps, guidance_scale=self.guidance_scale, **extra)
                out.append(result.images.float().cpu())
        return torch.cat(out)

    # ------------------------------------------------------------------------------------------------ reading
    def measure(self, pipe, denoiser=None, name: str = "model") -> Reading:
        """Sample and read ``pipe`` (or ``denoiser`` in it); against :attr:`reference` when one is set."""
        from .evaluation import judge_metrics
        from .images import to_uint8
        from .metrics import compute_eval_metrics, distance_from_base, grid_embeds, image_rewards

        images = self.sample(pipe, denoiser)
        rewards = image_rewards(images, self.prompts, self._reward_fn, self.batch_size) if self._reward_fn else None
        # The metrics of the float images, as a training run's evals compute them ...
        metrics = compute_eval_metrics(images, self.prompts, self.clip, rewards=rewards, batch_size=self.batch_size)
        metrics.update(judge_metrics(images, self.prompts))  # toy prompts only; {} otherwise
        ref, saved = self.reference, to_uint8(images)
        if ref is not None and ref.images is not None:
            # ... but the distance from the base between 8-bit images, all a reference keeps (``base.npz``), so the
            # base's own weights read as 0 before and after a watcher's restart.
            if self._reference_embeds is None:
                self._reference_embeds = grid_embeds(ref.images, self.clip, self.batch_size)
            dist = distance_from_base(saved, ref.images, self.clip, base_embeds=self._reference_embeds,
                                      batch_size=self.batch_size)
            metrics["dist_base_pixel"], metrics["dist_base_clip"] = dist["pixel"], dist["clip"]
        reading = Reading(name=name, metrics=metrics, images=saved, rewards=None if rewards is None else rewards.numpy(),
                          base=None if ref is None else ref.metrics)
        if ref is not None and ref.rewards is not None and rewards is not None:
            from .report.stats import paired_gain

            reading.reward_z = paired_gain(ref.rewards, reading.rewards)["z"]
        return reading

    def set_reference(self, reading_or_pipe, denoiser=None, name: str = "base") -> Reading:
        """The reading later ones are judged against: a :class:`Reading`, or a pipeline to measure (the base)."""
        if isinstance(reading_or_pipe, Reading):
            reading = reading_or_pipe
        else:
            self.reference = None
            reading = self.measure(reading_or_pipe, denoiser, name=name)
        if reading.images is not None and reading.images.shape[:2] != (len(self.prompts), len(self.seeds)):
            raise ValueError(f"the reference has {reading.images.shape[:2]} prompts x seeds, the monitor "
                             f"({len(self.prompts)}, {len(self.seeds)})")
        self.reference, self._reference_embeds = reading, None
        return reading
