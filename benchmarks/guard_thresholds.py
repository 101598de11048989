"""Where the guard's stop rule would have fired in the study's committed runs: the evidence for its defaults.

    python benchmarks/guard_thresholds.py [--out results/guard_thresholds]
    python benchmarks/guard_thresholds.py --runs study_v3='*-s*' --by-condition --out results/study_v3_guard

Reads only committed ``metrics.csv`` files: the no-penalty toy_30 runs of ``results/toy_study`` (80 epochs, 15
runs: LoRA, full, progressive x seeds) and the 240-epoch runs of ``results/toy_plateau`` (12 runs). For each run
and each part of the rule at the config's default threshold (``DDPOConfig.stop_*``; ``ddpo_study.guard``), the
first eval after epoch 0 where it fires, the eval reward gain over epoch 0 there, and the run's largest gain; and,
as a false-alarm check, each part's reading at the first eval (epoch 5), when the runs had barely moved. Writes
``firing.csv`` (a row per run) and ``README.md`` (the counts the docs cite). Nothing is sampled: these are the
readings the runs' own evals made. ``--runs GRID=GLOB`` reads other grids' finished runs instead (study v3: the
guard is off in every cell, so each run's own evals say where it would have stopped); ``--by-condition`` adds a
table per condition (the run's folder name without its seed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ddpo_study.config import DDPOConfig  # noqa: E402
from ddpo_study.guard import StopRule  # noqa: E402

RUNS = {"toy_study": "toy_30-*-lam0.0-s*", "toy_plateau": "*-s*"}


def run_rows(rule: StopRule, runs: dict[str, str] = RUNS) -> pd.DataFrame:
    rows = []
    for grid, pattern in runs.items():
        for metrics in sorted((ROOT / "results" / grid).glob(f"{pattern}/metrics.csv")):
            if not (metrics.parent / "DONE").is_file():
                continue  # a running cell: its stop point is not known yet
            ev = pd.read_csv(metrics).dropna(subset=["reward_mean"]).sort_values("epoch")
            if len(ev) < 2:
                continue  # no eval after epoch 0: nothing the rule could read
            base = ev.iloc[0].to_dict()
            checks = [rule.check(r, base) for r in ev.iloc[1:].to_dict("records")]
            gain = dict(zip(ev["epoch"].astype(int), ev["reward_mean"] - base["reward_mean"]))
            row = {"grid": grid, "run": metrics.parent.name, "epochs": int(ev["epoch"].max()),
                   "max_gain": float(max(gain.values()))}
            for part in ("cross_prompt", "retrieval", "judge"):
                first = next((c.epoch for c in checks if part in c.fired), None)
                row[f"{part}_epoch"] = first
                row[f"{part}_gain"] = gain[first] if first is not None else np.nan
            fired = [c for c in checks if c.fired]
            row["fires_epoch"] = fired[0].epoch if fired else None
            row["fires_rules"] = "+".join(fired[0].fired) if fired else ""
            row["fires_gain"] = gain[fired[0].epoch] if fired else np.nan
            first_eval = checks[0]
            row.update(first_eval_epoch=first_eval.epoch, first_eval_cross_ratio=first_eval.cross_prompt_ratio,
                       first_eval_retrieval_drop=first_eval.retrieval_drop, first_eval_judge_drop=first_eval.judge_drop,
                       first_eval_fired="+".join(first_eval.fired))
            rows.append(row)
    return pd.DataFrame(rows)


def summary(df: pd.DataFrame, rule: StopRule) -> str:
    lines = ["# Where the guard would have fired in the committed runs",
             "", "`python benchmarks/guard_thresholds.py` (reads committed metrics.csv files only; see its docstring).",
             "", f"Thresholds (the config defaults): cross-prompt below {rule.cross_prompt_ratio} of epoch 0, "
             f"retrieval down {rule.retrieval_drop}, judge all-correct down {rule.judge_drop}.", ""]
    for grid, g in df.groupby("grid", sort=False):
        lines.append(f"## {grid} ({len(g)} runs)")
        for part in ("cross_prompt", "retrieval", "judge"):
            e = g[f"{part}_epoch"].dropna()
            lines.append(f"- {part}: fired in {len(e)} of {len(g)} runs, first at epoch {_epochs(e)}; eval reward "
                         f"gain there median {g[f'{part}_gain'].median():+.3f}")
        first = g["fires_rules"].str.split("+")
        judge_first = sum("judge" in r and len(r) == 1 for r in first)
        lines.append(f"- the rule as a whole fired at epoch {_epochs(g['fires_epoch'].dropna())}, with a median gain "
                     f"of {g['fires_gain'].median():+.3f} "
                     f"against a median largest gain of {g['max_gain'].median():+.3f}; the judge alone fired first in "
                     f"{judge_first} of {len(g)} runs")
        lines.append(f"- at the first eval (epoch {int(g['first_eval_epoch'].iloc[0])}): fired in "
                     f"{int((g['first_eval_fired'] != '').sum())} of {len(g)} runs; largest judge drop "
                     f"{g['first_eval_judge_drop'].max():+.3f}, largest retrieval drop "
                     f"{g['first_eval_retrieval_drop'].max():+.3f}, lowest cross-prompt ratio "
                     f"{g['first_eval_cross_ratio'].min():.3f}")
        lines.append("")
    return "\n".join(lines)


def _epochs(e: pd.Series) -> str:
    return f"{int(e.min())}-{int(e.max())} (median {e.median():g})" if len(e) else "never"


def condition_table(df: pd.DataFrame) -> str:
    """Per condition: runs, how many the rule stopped, where (epochs, reward gain there) and the largest gain."""
    rows = ["| grid | condition | runs | stopped | first stop epoch | gain at the stop (median) | largest gain (median) "
            "| fired at the first eval |", "|---|---|---|---|---|---|---|---|"]
    conditions = df["run"].str.replace(r"-s\d+$", "", regex=True)  # the folder name without its seed
    for (grid, cond), g in df.groupby([df["grid"], conditions], sort=False):
        e = g["fires_epoch"].dropna()
        gain = f"{g['fires_gain'].median():+.3f}" if len(e) else ""
        rows.append(f"| {grid} | {cond} | {len(g)} | {len(e)} | {_epochs(e)} | {gain} | {g['max_gain'].median():+.3f} "
                    f"| {int((g['first_eval_fired'] != '').sum())} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "guard_thresholds")
    ap.add_argument("--runs", nargs="+", metavar="GRID=GLOB", default=None,
                    help="grid folders under results/ and the run folders to read (default: "
                    + " ".join(f"{k}='{v}'" for k, v in RUNS.items()) + ")")
    ap.add_argument("--by-condition", action="store_true", help="add a table per condition")
    args = ap.parse_args(argv)
    runs = RUNS
    if args.runs:
        bad = [r for r in args.runs if "=" not in r]
        if bad:
            ap.error(f"--runs takes GRID=GLOB, got {bad[0]!r}")
        runs = dict(r.split("=", 1) for r in args.runs)
        if len(runs) < len(args.runs):
            ap.error("--runs names a grid twice: give each GRID=GLOB once")
    rule = StopRule.from_config(DDPOConfig())
    df = run_rows(rule, runs)
    if df.empty:
        raise SystemExit(f"no finished runs in {', '.join(f'results/{k}/{v}' for k, v in runs.items())}")
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "firing.csv", index=False, float_format="%.4f")
    text = summary(df, rule)
    if args.by_condition:
        text += "\n## Per condition\n\n" + condition_table(df) + "\n"
    (args.out / "README.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
