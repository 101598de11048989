"""One table of lever probes: each run's eval curve with its training CPU time, gain and the diversity it kept.

    python benchmarks/lever_table.py RUN [RUN ...] --out results/time_to_plateau/nft_levers.csv

The first RUN is the reference: each row names the config settings in which its run differs from it. Gain,
clustered z and CPU-seconds are computed as ``time_to_plateau.py`` computes them (its ``curve``), so a lever's
probe reads on the same scale as the benchmark. Compare probes only where their eval settings (``eval_num_steps``,
guidance) agree: a gain measured with another eval sampler starts from another base. Prints the table and writes
it as CSV (a row per run x eval).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from time_to_plateau import curve

from ddpo_study.rundir import load_metrics, read_config

SKIP = {"output_dir", "num_epochs"}  # differ between probes without being levers
COLUMNS = ["epoch", "cpu_s", "reward_mean", "gain", "z", "judge_all", "retrieval_acc", "cross_div_clip"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run folders; the first is the reference")
    ap.add_argument("--out", required=True, help="CSV to write")
    args = ap.parse_args()
    runs = [Path(r) for r in args.runs]
    missing = [str(r) for r in runs if not r.is_dir()]
    if missing:
        raise SystemExit(f"error: not a run folder: {', '.join(missing)}")
    ref = read_config(runs[0])
    frames = []
    for run in runs:
        cfg = read_config(run)
        diff = {k: v for k, v in cfg.items() if k not in SKIP and ref.get(k) != v}
        ev = curve(load_metrics(run), run)
        frames.append(ev[[c for c in COLUMNS if c in ev]].assign(
            run=run.name, differs="; ".join(f"{k}={v}" for k, v in sorted(diff.items())) or "(reference)"))
    table = pd.concat(frames)[["run", "differs", *COLUMNS]]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False, float_format="%.4g")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))


if __name__ == "__main__":
    main()
