"""Does DDPO learn? A few epochs on the toy model per fine-tuning mode; prints the reward before and after.

    python benchmarks/learning_check.py [--reward aesthetic] [--epochs 10] [--modes lora full progressive] \
        [--set lora_learning_rate=1e-3 --set samples_per_epoch=128 ...]

For each mode it runs ``ddpo_study.train.run`` into ``<out>/<reward>-<mode>-e<epochs>[-tag]`` and then
compares the per-image task rewards saved with the eval images of epoch 0 (base model) and of the last
epoch (``report.paired_reward_gain``, the summary's learning table). The eval set is fixed prompts x fixed
seeds, so the two are *paired* image by image: "learns" means the mean per-image reward gain exceeds 3
standard errors of the paired differences (``z > 3``). The training-reward
columns are the mean reward of the first and last epoch's samples (different prompts each epoch, so they
are noisier). Not a test: it takes minutes per mode. Also prints the judge's prompt-following accuracy and
the cross-prompt diversity before/after, the symptom this study is about.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from ddpo_study import report
from ddpo_study.cli import parse_sets
from ddpo_study.config import DDPOConfig
from ddpo_study.rundir import load_metrics
from ddpo_study.train import run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reward", default="aesthetic")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--modes", nargs="+", default=["lora", "full", "progressive"])
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="any DDPOConfig field, repeatable")
    ap.add_argument("--tag", default="", help="suffix for the run folders (to keep variants apart)")
    ap.add_argument("--out", default="runs/learning_check")
    args = ap.parse_args()

    rows = []
    for mode in args.modes:
        name = f"{args.reward}-{mode}-e{args.epochs}" + (f"-{args.tag}" if args.tag else "")
        settings = {"output_dir": f"{args.out}/{name}", "mode": mode, "reward": args.reward,
                    "num_epochs": args.epochs, "eval_every": args.epochs,
                    "progressive_switch_epoch": max(1, args.epochs // 2), **parse_sets(args.overrides)}
        cfg = DDPOConfig.from_dict(settings)
        out = Path(run(cfg))
        gain = report.paired_reward_gain(out, args.epochs)
        z = gain["z"]
        df = load_metrics(out)
        first, last = df[df.epoch == 1].iloc[0], df[df.epoch == args.epochs].iloc[0]
        base = df[df.epoch == 0].iloc[0]
        rows.append({"mode": mode, "eval_reward_0": gain["reward_0"], "eval_reward_end": gain["reward_end"],
                     "z (paired)": z, "learns": bool(z > 3),
                     "train_reward_first": first.train_reward_mean, "train_reward_last": last.train_reward_mean,
                     "cross_div_clip": f"{base.cross_div_clip:.3f}->{last.cross_div_clip:.3f}",
                     "judge_position": f"{base.get('judge_position', float('nan')):.2f}->"
                                       f"{last.get('judge_position', float('nan')):.2f}",
                     "approx_kl_mean": df.train_approx_kl.mean(), "param_dist": last.param_dist,
                     "sec_per_epoch": (df.time_sample_s + df.time_reward_s + df.time_train_s).mean()})
        print(pd.DataFrame(rows[-1:]).to_string(index=False, float_format=lambda v: f"{v:.4g}"), flush=True)
    print()
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4g}"))


if __name__ == "__main__":
    main()
