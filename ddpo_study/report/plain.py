"""The summary page's opening paragraph: what each condition gained and what it lost, in words, from the data.

A newcomer who ran the quick demo should see the arc (reward up, prompts going) before any table of "not
answered" questions. The paragraph reads each condition's first and last evals (the seed mean), applies the one
rule of :mod:`ddpo_study.collapse` to the mean readings, and says how much weight the numbers carry: with one seed
per condition nothing is a test ("one seed: exploratory"); with more, the CIs are in the tables below.
"""

from __future__ import annotations

import math

import pandas as pd

from ..collapse import COLLAPSE_DIVERSITY_RATIO, COLLAPSE_RETRIEVAL_DROP, lost_prompts
from .results import eval_rows

#: (column, words, format) of the readings the paragraph reports, judge first: it is the CLIP-free referee.
READINGS = (("judge_all", "judge all-correct", ".2f"), ("cross_div_clip", "cross-prompt CLIP distance", ".3f"),
            ("retrieval_acc", "prompt retrieval", ".2f"))


def _first_last(ev: pd.DataFrame, column: str) -> tuple[float, float, int]:
    """Seed means of ``column`` at each run's first and last eval, and that last epoch (the smallest over runs)."""
    firsts, lasts, ends = [], [], []
    for _, run in ev.dropna(subset=[column]).groupby("cell", sort=False):
        run = run.sort_values("epoch")
        firsts.append(float(run[column].iloc[0]))
        lasts.append(float(run[column].iloc[-1]))
        ends.append(int(run["epoch"].iloc[-1]))
    if not firsts:
        return math.nan, math.nan, 0
    return sum(firsts) / len(firsts), sum(lasts) / len(lasts), min(ends)


def condition_sentence(label: str, ev: pd.DataFrame) -> str:
    """One condition's sentence: reward from its first to its last eval, what happened to the prompts."""
    seeds = ev["cell"].nunique()
    r0, r1, end = _first_last(ev, "reward_mean")
    who = f"**{label}** ({seeds} seed{'s' if seeds != 1 else ''}{', means' if seeds > 1 else ''})"
    parts = [f"{who}: eval reward {r0:.3f} at epoch 0, {r1:.3f} at epoch {end} ({r1 - r0:+.3f})"]
    readings = {}
    for column, words, fmt in READINGS:
        if column in ev:
            a, b, _ = _first_last(ev, column)
            if math.isfinite(a) and math.isfinite(b):
                readings[column] = (a, b)
                parts.append(f"{words} {a:{fmt}} -> {b:{fmt}}")
    sentence = "; ".join(parts)
    if "cross_div_clip" in readings and "retrieval_acc" in readings:
        (c0, c1), (q0, q1) = readings["cross_div_clip"], readings["retrieval_acc"]
        lost = c0 > 0 and lost_prompts(c1 / c0, q0 - q1)
        sentence += (f". By the collapse rule (cross-prompt below {COLLAPSE_DIVERSITY_RATIO:g} of epoch 0, or retrieval "
                     f"down {COLLAPSE_RETRIEVAL_DROP:g}) it " + ("**lost the prompts**" if lost else "kept the prompts"))
    return sentence + "."


def plain_summary(df: pd.DataFrame) -> str:
    """The paragraph (Markdown) for the grid's tidy results ``df`` (``load_grid_results``); '' when empty."""
    ev = eval_rows(df)
    if ev.empty:
        return ""
    seeds = ev.groupby("condition")["cell"].nunique()
    if seeds.max() <= 1:
        weight = "One seed per condition: exploratory, nothing here is a test."
    else:
        span = f"{int(seeds.min())}" if seeds.min() == seeds.max() else f"{int(seeds.min())}-{int(seeds.max())}"
        weight = f"{span} seeds per condition; the 95% CIs and the pre-registered questions are in the tables below."
    sentences = [condition_sentence(str(label), part) for label, part in ev.groupby("condition", sort=False)]
    return "\n".join([weight, "", *(f"- {s}" for s in sentences)])
