"""The eval protocol: fixed held-out prompts x fixed seeds -> images and metrics.

Every run evaluates the same ``eval_num_prompts`` prompts at seeds ``EVAL_SEED_BASE + j``, so two runs (or two
epochs of one run) compare image by image. The task reward is scored without any diversity penalty: a penalised
eval reward would depend on how eval images are batched. Where the images, prompts and rewards are saved (the
run's ``eval/`` files and a grid's shared base-eval copies): :mod:`ddpo_study.rundir`.
"""

from __future__ import annotations

import torch

from .config import EVAL_SEED_BASE, DDPOConfig


def eval_seeds(num_seeds: int) -> list[int]:
    """The fixed eval seeds ``EVAL_SEED_BASE .. EVAL_SEED_BASE + num_seeds - 1``."""
    return [EVAL_SEED_BASE + j for j in range(num_seeds)]


def evaluate(cfg: DDPOConfig, family, pipe, denoiser, eval_prompts, reward_fn, clip, lpips_model, base_images=None,
             base_embeds=None):
    """Returns (images (P, S, 3, H, W) in [0, 1], metrics, rewards (P, S)).

    The images come from the sampler family's eval sampler (``SamplerFamily.generate``: per-image seeds, as the
    stock pipeline samples). ``base_images`` / ``base_embeds`` (the epoch-0 images or their CLIP embeddings)
    enable the distance-from-base metrics.
    """
    from .metrics import compute_eval_metrics, image_rewards

    seeds = eval_seeds(cfg.eval_num_seeds)
    pairs = [(p, s) for p in eval_prompts for s in seeds]
    generated = family.generate(pipe, denoiser, [p for p, _ in pairs], [s for _, s in pairs], cfg)
    images = generated.float().cpu().reshape(len(eval_prompts), len(seeds), *generated.shape[1:])
    rewards = image_rewards(images, eval_prompts, reward_fn)
    metrics = compute_eval_metrics(images, eval_prompts, clip, base_images=base_images, rewards=rewards,
                                   lpips=lpips_model, base_embeds=base_embeds)
    metrics.update(judge_metrics(images, eval_prompts))
    return images, metrics, rewards


def judge_metrics(images: torch.Tensor, prompts: list[str]) -> dict[str, float]:
    """Toy world only: the geometric judge's attribute accuracy (``judge_<attr>``) and its number of distinct
    readings across prompts at one seed (``judge_distinct``, ``judge_distinct_frac``), a CLIP-free referee.

    Empty for prompts outside the toy grammar (Stable Diffusion runs).
    """
    from .toy import world
    from .toy.judge import attribute_accuracy, distinct_readings

    try:
        attrs = world.parse_many(prompts)
    except world.PromptError:
        return {}
    accuracy = attribute_accuracy(images.flatten(0, 1), attrs.repeat_interleave(images.shape[1]))
    distinct = distinct_readings(images, attrs)  # how many different prompts' images still read differently
    return {f"judge_{k}": v for k, v in {**accuracy, **distinct}.items()}
