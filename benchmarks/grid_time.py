"""Where the wall time of finished runs went: sampling, reward, training, evaluation, and everything else.

    python benchmarks/grid_time.py                       # results/toy_study (the grid's output root)
    python benchmarks/grid_time.py runs/lora30           # one run folder
    python benchmarks/grid_time.py results/toy_study --cells   # plus one row per cell

What it reads (it times nothing itself, so it has no ``--repeats``: the repeats are the epochs and cells).
Every folder under PATH (PATH included) that holds a ``metrics.csv`` is a run. Its columns ``time_sample_s``,
``time_reward_s``, ``time_train_s`` and ``time_eval_s`` (written by ``ddpo_study.train.run``; empty cells
count as 0) are summed over epochs. If the folder also holds the grid runner's ``status.json`` with
``seconds`` (the wall time of the cell's notebook run), then

    overhead = seconds - (sample + reward + train + eval)

is what the four phases do not cover: starting the kernel, imports, loading the pipeline and scorers,
checkpoints, metrics files, the notebook's own plots and tables, and the HTML report.

How to read it. The table covers only the runs whose wall time is known for all their epochs: those with a
``status.json`` that ran in one attempt. A run whose status says ``attempt`` > 1 was resumed: its ``seconds``
cover the last attempt only while ``metrics.csv`` covers all epochs, so phases and wall time would not add up
(an earlier version mixed them in, and its parts summed to more than 100 %); a run without a status has no wall
time. Both kinds are counted and listed (``--cells``), not measured. The fractions are of the table's wall time,
so the four phases and the overhead add up to 100 %. The study wants the overhead small (target <= 5 %): the
time should go into DDPO itself.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from ddpo_study.rundir import METRICS_FILE, read_status  # noqa: E402

PHASES = {"sample": "time_sample_s", "reward": "time_reward_s", "train": "time_train_s", "eval": "time_eval_s"}


def find_runs(root: Path) -> list[Path]:
    return sorted({p.parent for p in root.rglob(METRICS_FILE)} | ({root} if (root / METRICS_FILE).is_file() else set()))


def read_run(run: Path) -> dict:
    import pandas as pd

    df = pd.read_csv(run / METRICS_FILE)  # as it is: a running cell's time counts too
    row = {"run": run, "epochs": int(df["epoch"].max()) if "epoch" in df and len(df) else len(df)}
    for name, col in PHASES.items():
        row[name] = float(df[col].fillna(0).sum()) if col in df else 0.0
    row["phases"] = sum(row[n] for n in PHASES)
    row["seconds"], row["attempt"], row["state"] = None, None, None
    status = read_status(run)
    if status is not None:
        if isinstance(status.get("seconds"), (int, float)):
            row["seconds"] = float(status["seconds"])
        row["attempt"], row["state"] = status.get("attempt"), status.get("state")
    row["overhead"] = None if row["seconds"] is None else row["seconds"] - row["phases"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("path", nargs="?", default="results/toy_study", help="a run folder or a grid output root")
    ap.add_argument("--cells", action="store_true", help="also print one row per run")
    args = ap.parse_args()
    root = Path(C.repo_path(args.path))
    if not root.exists():
        raise SystemExit(f"{root} does not exist")
    runs = [read_run(r) for r in find_runs(root)]
    if not runs:
        raise SystemExit(f"no {METRICS_FILE} under {root}")

    with_status = [r for r in runs if r["seconds"] is not None]
    resumed = [r for r in with_status if (r["attempt"] or 1) > 1]
    # The table is over the runs whose wall time is known and covers all their epochs: those with a status that ran
    # in one attempt. A resumed run's status covers its last attempt only, so its phases and its wall time are not
    # of the same epochs; without a status the wall time is unknown. Both are listed, not measured.
    whole = [r for r in with_status if (r["attempt"] or 1) == 1]
    if args.cells:
        rows = []
        for r in runs:
            name = str(r["run"].relative_to(root)) if r["run"] != root else r["run"].name
            rows.append([name, r["epochs"], *(f"{r[n]:.1f}" for n in PHASES),
                         "-" if r["seconds"] is None else f"{r['seconds']:.1f}",
                         "-" if r["overhead"] is None else f"{r['overhead']:.1f}",
                         "-" if r["overhead"] is None or not r["seconds"] else f"{100 * r['overhead'] / r['seconds']:.1f}",
                         r["state"] or "-", r["attempt"] or "-", "yes" if r in whole else "no"])
        print(C.table(rows, ["run", "epochs", "sample s", "reward s", "train s", "eval s", "status s", "overhead s",
                             "overhead %", "state", "attempt", "in table"]))
        print()

    print(f"{len(runs)} run(s) under {root}: {len(whole)} ran in one attempt with status.json seconds (the table); "
          f"left out: {len(resumed)} resumed (status covers the last attempt only), "
          f"{len(runs) - len(with_status)} without status.json (wall time unknown)")
    if not whole:
        raise SystemExit("no run with a one-attempt status.json: the wall time, and so the overhead, is unknown")
    totals = {n: sum(r[n] for r in whole) for n in PHASES}
    overhead = sum(r["overhead"] for r in whole)
    wall = sum(r["seconds"] for r in whole)
    epochs = sum(r["epochs"] for r in whole)
    rows = [[n, f"{totals[n]:.1f}", f"{100 * totals[n] / wall:.1f}", f"{totals[n] / epochs:.2f}"] for n in PHASES]
    rows.append(["overhead", f"{overhead:.1f}", f"{100 * overhead / wall:.1f}", f"{overhead / epochs:.2f}"])
    rows.append(["total wall", f"{wall:.1f}", "100.0", f"{wall / epochs:.2f}"])
    print(C.table(rows, ["part", "seconds", "% of wall", "s / epoch"]))
    frac = overhead / wall
    print(f"\noverhead {100 * frac:.1f} % of the wall time of the {len(whole)} run(s) that ran in one attempt "
          f"(target <= 5 %: {'met' if frac <= 0.05 else 'NOT met'})")


if __name__ == "__main__":
    main()
