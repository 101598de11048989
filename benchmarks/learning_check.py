"""Does DDPO learn? A few epochs on the toy model per fine-tuning mode; prints reward before/after.

    python benchmarks/learning_check.py [--reward jpeg_compressibility] [--epochs 6] [--modes lora full progressive]

For each mode it runs ``ddpo_study.train.run`` into ``runs/learning_check/<reward>-<mode>`` and reads the
per-epoch training rewards (``train_reward_mean``/``train_reward_std`` over ``samples_per_epoch`` images)
and the eval reward at epoch 0 and at the end. "Learns" means the last epoch's mean training reward
exceeds the first epoch's by more than 3 standard errors of the difference. Not a test: it takes minutes.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

from ddpo_study.config import DDPOConfig
from ddpo_study.train import run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reward", default="jpeg_compressibility")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--modes", nargs="+", default=["lora", "full", "progressive"])
    ap.add_argument("--lora-lr", type=float, default=DDPOConfig.lora_learning_rate)
    ap.add_argument("--full-lr", type=float, default=DDPOConfig.full_learning_rate)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--out", default="runs/learning_check")
    args = ap.parse_args()
    rows = []
    for mode in args.modes:
        cfg = DDPOConfig(output_dir=f"{args.out}/{args.reward}-{mode}-e{args.epochs}", mode=mode, reward=args.reward,
                         num_epochs=args.epochs, eval_every=args.epochs, samples_per_epoch=args.samples,
                         lora_learning_rate=args.lora_lr, full_learning_rate=args.full_lr,
                         progressive_switch_epoch=max(1, args.epochs // 2))
        df = pd.read_csv(Path(run(cfg)) / "metrics.csv")
        first, last = df[df.epoch == 1].iloc[0], df[df.epoch == args.epochs].iloc[0]
        se = math.sqrt((first.train_reward_std**2 + last.train_reward_std**2) / args.samples)
        z = (last.train_reward_mean - first.train_reward_mean) / se
        rows.append({"mode": mode, "train_reward_first": first.train_reward_mean, "train_reward_last": last.train_reward_mean,
                     "z (std. errors)": z, "learns": z > 3, "eval_reward_0": df.reward_mean.iloc[0],
                     "eval_reward_end": last.reward_mean, "approx_kl_mean": df.train_approx_kl.mean(),
                     "param_dist": last.param_dist, "sec_per_epoch": (df.time_sample_s + df.time_reward_s + df.time_train_s).mean()})
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4g}"))


if __name__ == "__main__":
    main()
