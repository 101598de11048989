"""Where the guard's stop rule would have fired in the study's committed runs: the evidence for its defaults.

    python benchmarks/guard_thresholds.py [--out results/guard_thresholds]

Reads only committed ``metrics.csv`` files: the no-penalty toy_30 runs of ``results/toy_study`` (80 epochs, 15
runs: LoRA, full, progressive x seeds) and the 240-epoch runs of ``results/toy_plateau`` (12 runs). For each run
and each part of the rule at the config's default threshold (``DDPOConfig.stop_*``; ``ddpo_study.guard``), the
first eval after epoch 0 where it fires, the eval reward gain over epoch 0 there, and the run's largest gain; and,
as a false-alarm check, each part's reading at the first eval (epoch 5), when the runs had barely moved. Writes
``firing.csv`` (a row per run) and ``README.md`` (the counts the docs cite). Nothing is sampled: these are the
readings the runs' own evals made.
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


def run_rows(rule: StopRule) -> pd.DataFrame:
    rows = []
    for grid, pattern in RUNS.items():
        for metrics in sorted((ROOT / "results" / grid).glob(f"{pattern}/metrics.csv")):
            ev = pd.read_csv(metrics).dropna(subset=["reward_mean"]).sort_values("epoch")
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
            lines.append(f"- {part}: fired in {len(e)} of {len(g)} runs, first at epoch {int(e.min())}-{int(e.max())} "
                         f"(median {e.median():g}); eval reward gain there median {g[f'{part}_gain'].median():+.3f}")
        first = g["fires_rules"].str.split("+")
        judge_first = sum("judge" in r and len(r) == 1 for r in first)
        lines.append(f"- the rule as a whole fired at epoch {int(g['fires_epoch'].min())}-{int(g['fires_epoch'].max())} "
                     f"(median {g['fires_epoch'].median():g}), with a median gain of {g['fires_gain'].median():+.3f} "
                     f"against a median largest gain of {g['max_gain'].median():+.3f}; the judge alone fired first in "
                     f"{judge_first} of {len(g)} runs")
        lines.append(f"- at the first eval (epoch {int(g['first_eval_epoch'].iloc[0])}): fired in "
                     f"{int((g['first_eval_fired'] != '').sum())} of {len(g)} runs; largest judge drop "
                     f"{g['first_eval_judge_drop'].max():+.3f}, largest retrieval drop "
                     f"{g['first_eval_retrieval_drop'].max():+.3f}, lowest cross-prompt ratio "
                     f"{g['first_eval_cross_ratio'].min():.3f}")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "guard_thresholds")
    args = ap.parse_args(argv)
    rule = StopRule.from_config(DDPOConfig())
    df = run_rows(rule)
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "firing.csv", index=False, float_format="%.4f")
    text = summary(df, rule)
    (args.out / "README.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
