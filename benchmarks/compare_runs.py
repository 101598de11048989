"""Does one run reproduce another? Compares two runs' ``metrics.csv`` row by row up to an epoch.

    python benchmarks/compare_runs.py results/toy_hypotheses/lora-base-s0 results/toy_study/toy_30-lora-lam0.0-s0 \
        [--until 40]

Every column the two files share is compared on the epochs both logged (up to ``--until``), except wall-clock
and CPU timings, which depend on the machine. Training is deterministic for a given config, code and thread count
(``train.run`` seeds every random draw by run seed, epoch and purpose), so a run that is a prefix of another
(e.g. the hypotheses grid's 40-epoch baseline and the study's 80-epoch run of the same config) should give the
same numbers bit for bit. Prints one line per differing column with its largest absolute difference, and exits
1 when any column differs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ddpo_study.rundir import METRICS_FILE, load_metrics

TIMING = ("time_", "cpu_epoch_s")  # machine-dependent columns: not compared


def compare(a: Path, b: Path, until: int | None = None) -> tuple[int, list[tuple[str, float]]]:
    """(rows compared, [(column, max |a - b|)] for the columns that differ)."""
    da, db = (load_metrics(p) for p in (a, b))
    if until is not None:
        da, db = da[da["epoch"] <= until], db[db["epoch"] <= until]
    cols = [c for c in da.columns if c in db.columns and c != "epoch" and not c.startswith(TIMING)]
    m = pd.merge(da[["epoch", *cols]], db[["epoch", *cols]], on="epoch", suffixes=("_a", "_b"))
    differ = []
    for c in cols:
        x, y = m[f"{c}_a"], m[f"{c}_b"]
        same = (x == y) | (x.isna() & y.isna())
        if not same.all():
            num = pd.to_numeric(x, errors="coerce") - pd.to_numeric(y, errors="coerce")
            differ.append((c, float(np.nanmax(np.abs(num))) if num.notna().any() else float("nan")))
    return len(m), differ


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("a", type=Path, help="a run folder (with metrics.csv)")
    p.add_argument("b", type=Path, help="the run it should reproduce")
    p.add_argument("--until", type=int, default=None, help="compare epochs up to this one (default: all shared)")
    args = p.parse_args(argv)
    for run in (args.a, args.b):
        if not (run / METRICS_FILE).is_file():
            print(f"no {METRICS_FILE} in {run}", file=sys.stderr)
            return 2
    rows, differ = compare(args.a, args.b, args.until)
    for col, diff in differ:
        print(f"{col}: differs (max |a - b| = {diff:.3g})")
    print(f"{rows} epochs compared: " + ("identical in every non-timing column" if not differ
                                         else f"{len(differ)} column(s) differ"))
    return 1 if differ or rows == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
