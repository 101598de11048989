"""How large must the diversity penalty's lambda be to matter? Prints the scale that makes it comparable.

    python benchmarks/diversity_scale.py [--model toy] [--reward aesthetic] [--prompts toy_30] [--groups 8 --per-prompt 8]
    python benchmarks/diversity_scale.py --model sd15 --prompts sd_animals_30 --groups 32 \
        --aesthetic-model data/laion/sac+logos+ava1-l14-linearMSE.pth

DDPO normalises rewards per prompt, so a penalty term only steers the policy through its spread *within* a
prompt's group of images; a constant per prompt cancels. This samples ``groups x per-prompt`` images from
the base model exactly as one training epoch does, scores them with the task reward and the cross-prompt
similarity (CLIP feature), and prints both within-prompt standard deviations and their ratio: the lambda
at which the penalty's within-prompt spread equals the reward's. On the toy model the ratio is about 28 for
the aesthetic reward (a lambda of 0.5 would be 2% of the signal, i.e. no penalty at all) and about 1 for
JPEG compressibility.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from ddpo_study.config import DDPOConfig
from ddpo_study.models import load_pipeline, load_scorers
from ddpo_study.prompts import load_prompts
from ddpo_study.rewards import RewardContext, make_reward
from ddpo_study.sampler import sample_trajectories
from ddpo_study.train import epoch_prompts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="toy")
    ap.add_argument("--reward", default="aesthetic")
    ap.add_argument("--aesthetic-model", default="", help="aesthetic predictor file/folder (SD: the LAION .pth)")
    ap.add_argument("--prompts", default="toy_30")
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--per-prompt", type=int, default=8)
    ap.add_argument("--form", default="cross_prompt", choices=["cross_prompt", "within_prompt"])
    ap.add_argument("--feature", default="clip", choices=["clip", "pixel", "lpips"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    cfg = DDPOConfig(model=args.model, reward=args.reward, prompt_set=args.prompts, seed=args.seed,
                     aesthetic_model=args.aesthetic_model,
                     samples_per_epoch=args.groups * args.per_prompt, images_per_prompt=args.per_prompt)
    device = torch.device("cpu")
    pipe = load_pipeline(cfg.model, device=device)
    clip, aesthetic, lpips, _ = load_scorers(cfg, device)
    pairs = epoch_prompts(cfg, load_prompts(cfg.prompt_set), epoch=1)
    prompts = [p for p, _ in pairs]
    traj = sample_trajectories(pipe, prompts, [s for _, s in pairs], num_inference_steps=cfg.num_steps,
                               guidance_scale=cfg.guidance_scale, eta=cfg.eta, batch_size=cfg.sample_batch_size)
    reward_fn = make_reward(cfg.reward, RewardContext(clip=clip, aesthetic=aesthetic, lpips=lpips, device=device),
                            diversity_lambda=1.0, diversity_form=args.form, diversity_feature=args.feature)
    _, info = reward_fn(traj.images, prompts)
    shape = (args.groups, args.per_prompt)
    reward = np.asarray(info["base_reward"], dtype=np.float64).reshape(shape)
    similarity = np.asarray(info["similarity"], dtype=np.float64).reshape(shape)
    r_within, s_within = reward.std(1).mean(), similarity.std(1).mean()
    print(f"{args.reward}: within-prompt std {r_within:.4f}, between-prompt std {reward.mean(1).std():.4f}")
    print(f"{args.form} similarity ({args.feature}): mean {similarity.mean():.4f}, within-prompt std {s_within:.4f}")
    print(f"lambda at which the penalty's within-prompt spread equals the reward's: {r_within / s_within:.1f}")


if __name__ == "__main__":
    main()
