"""Statistics over seeds, and values at matched reward.

Means over seeds with 95% t-intervals (``mean +- t_{0.975, n-1} s / sqrt(n)``; none for n < 2).
Differences between two conditions use Welch's interval, seeds treated as independent runs. "Matched reward"
compares conditions where each run *first reaches* a common eval-reward level (linear interpolation between
eval epochs), the levels lying between the base model's reward and the lowest best reward of the conditions
compared, so that a condition that trains faster or slower is not mistaken for one that collapses more.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .results import _factors, eval_rows

MATCH_FRACTIONS = (0.25, 0.5, 0.75)


# ================================================================================================ statistics
def t_quantile(df: float, q: float = 0.975) -> float:
    from scipy.stats import t

    return float(t.ppf(q, df))


def mean_ci(values: Iterable[float]) -> tuple[float, float, float, int]:
    """(mean, low, high, n) of the finite values, 95% t-interval (NaN bounds for n < 2)."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    m = float(x.mean())
    if n < 2:
        return m, math.nan, math.nan, n
    half = t_quantile(n - 1) * float(x.std(ddof=1)) / math.sqrt(n)
    return m, m - half, m + half, n


def welch_ci(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """(mean(a) - mean(b), low, high): Welch's 95% interval (NaN bounds if either side has < 2 values)."""
    a = np.asarray([v for v in a if np.isfinite(v)], dtype=float)
    b = np.asarray([v for v in b if np.isfinite(v)], dtype=float)
    if len(a) == 0 or len(b) == 0:
        return math.nan, math.nan, math.nan
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return diff, math.nan, math.nan
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return diff, diff, diff
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = t_quantile(dof) * se
    return diff, diff - half, diff + half


def aggregate(df: pd.DataFrame, by: Sequence[str], metric: str) -> pd.DataFrame:
    """Mean and 95% CI of ``metric`` over the rows of each ``by`` group (seeds, usually)."""
    rows = []
    if metric in df:
        for key, group in df.dropna(subset=[metric]).groupby(list(by), sort=False):
            key = key if isinstance(key, tuple) else (key,)
            m, lo, hi, n = mean_ci(group[metric])
            rows.append({**dict(zip(by, key)), "mean": m, "low": lo, "high": hi, "n": n})
    return pd.DataFrame(rows, columns=[*by, "mean", "low", "high", "n"])


# ================================================================================================ matched reward
def value_at_reward(run: pd.DataFrame, level: float, metric: str, reward: str = "reward_mean") -> tuple[float, float]:
    """(metric, epoch) where one run's eval reward first reaches ``level``, linearly interpolated.

    NaN, NaN if the run never reaches it. ``run``: that run's eval rows.
    """
    r = run.dropna(subset=[reward, metric]).sort_values("epoch")
    rew, val, ep = r[reward].to_numpy(float), r[metric].to_numpy(float), r["epoch"].to_numpy(float)
    for j in range(len(rew)):
        if rew[j] >= level:
            if j == 0:
                return float(val[0]), float(ep[0])
            t = (level - rew[j - 1]) / (rew[j] - rew[j - 1])
            return float(val[j - 1] + t * (val[j] - val[j - 1])), float(ep[j - 1] + t * (ep[j] - ep[j - 1]))
    return math.nan, math.nan


def reward_levels(df: pd.DataFrame, fractions: Sequence[float] = MATCH_FRACTIONS,
                  reward: str = "reward_mean", top: str = "common") -> list[float]:
    """Reward levels for comparisons at matched reward: fractions of the way from the base reward to a target.

    ``top="common"``: the lowest of the conditions' best (seed-mean) rewards, a level every condition reaches;
    empty when some condition never improves on the base. ``top="best"``: the highest of them, so that a grid
    whose conditions gain very unequally still gets informative levels (not every condition reaches them).
    """
    if top not in ("common", "best"):
        raise ValueError(f"top must be 'common' or 'best', got {top!r}")
    ev = eval_rows(df, reward)
    if ev.empty:
        return []
    base = float(ev[ev["epoch"] == 0][reward].mean())
    best = ev.groupby(["condition", "epoch"])[reward].mean().groupby(level=0).max()
    target = float(best.min() if top == "common" else best.max())
    if not np.isfinite(base) or not np.isfinite(target) or target <= base:
        return []
    return [base + f * (target - base) for f in fractions]


def matched_runs(df: pd.DataFrame, metric: str = "cross_div_clip", levels: Sequence[float] | None = None,
                 fractions: Sequence[float] = MATCH_FRACTIONS, top: str = "common") -> pd.DataFrame:
    """Per run and reward level: ``metric`` and the epoch at which the run first reaches that level."""
    levels = list(levels) if levels is not None else reward_levels(df, fractions, top=top)
    fractions = list(fractions) if len(fractions) == len(levels) else [math.nan] * len(levels)
    ev = eval_rows(df)
    rows = []
    for cell, run in ev.groupby("cell", sort=False):
        first = run.iloc[0]
        for frac, level in zip(fractions, levels):
            value, epoch = value_at_reward(run, level, metric)
            rows.append({"cell": cell, "condition": first["condition"], "condition_order": first["condition_order"],
                         "seed": first.get("seed"), "fraction": frac, "reward_level": level, metric: value,
                         "epoch_reached": epoch, **{k: first[k] for k in _factors(df)}})
    return pd.DataFrame(rows)
