"""Does a grid cell's recipe, run with another run's seed, reproduce that run? The check behind pooling study
v3's P2 with study v2's seeds 0-5 (``pool_with``): the same recipe must give the same numbers today.

    python benchmarks/check_recipe_replay.py configs/study_v3.yaml ddpo-unet-lora-s6 \\
        results/toy_study/toy_30-lora-lam0.0-s0 --epochs 5 --out results/checks/p2_recipe_replay.txt

Trains the cell's config with the other run's seed for ``--epochs`` epochs (one thread, as grid cells run) under
``runs/``, and compares every logged result column (evals, weight distance, the controller's step and learning
rate, the training reward) with the other run's ``metrics.csv`` at those epochs. Prints (and with ``--out``
writes) both tables and the largest relative difference per column; exit status 1 when one exceeds ``--rtol``.
Not a test: a check of committed runs (a few CPU-minutes).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ddpo_study import grid, train  # noqa: E402
from ddpo_study.config import DDPOConfig  # noqa: E402
from ddpo_study.rundir import read_config  # noqa: E402

COLUMNS = ["reward_mean", "cross_div_clip", "retrieval_acc", "judge_all", "param_dist", "train_step_kl", "train_lr",
           "train_reward_mean"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("spec", help="the grid spec of the cell whose recipe is replayed")
    ap.add_argument("cell", help="the cell's name")
    ap.add_argument("other", help="a finished run folder whose seed the replay takes and whose numbers it compares")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--rtol", type=float, default=1e-6)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    try:
        _, cell = grid.find_cell(args.spec, args.cell)
    except grid.GridError as err:
        ap.error(str(err))
    other = Path(args.other)
    seed = read_config(other)["seed"]
    fields = {f.name for f in dataclasses.fields(DDPOConfig)}
    params = {**cell.params, "seed": seed, "num_epochs": args.epochs, "num_threads": 1,
              "output_dir": str(ROOT / "runs" / f"replay-{cell.name}-seed{seed}")}
    out = train.run(DDPOConfig.from_dict({k: v for k, v in params.items() if k in fields}), progress=False)
    a = pd.read_csv(out / "metrics.csv").set_index("epoch")
    b = pd.read_csv(other / "metrics.csv").set_index("epoch")
    rows = [e for e in a.index if e <= args.epochs]
    diff = ((a.loc[rows, COLUMNS] - b.loc[rows, COLUMNS]).abs() / b.loc[rows, COLUMNS].abs().clip(lower=1e-12)).max()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    lines = [f"# python benchmarks/check_recipe_replay.py {' '.join(argv or sys.argv[1:])}",
             f"# {datetime.date.today()}, commit {commit}: {args.cell}'s recipe with {other}'s seed {seed}, "
             f"epochs 0-{args.epochs}", "",
             pd.concat({f"{args.cell} recipe, seed {seed}": a.loc[rows, COLUMNS], str(other): b.loc[rows, COLUMNS]},
                       axis=1).T.to_string(), "", "largest relative difference per column:", diff.to_string(), "",
             "same numbers" if (diff.fillna(0) <= args.rtol).all() else f"DIFFERENT (rtol {args.rtol})"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0 if (diff.fillna(0) <= args.rtol).all() else 1


if __name__ == "__main__":
    raise SystemExit(main())
