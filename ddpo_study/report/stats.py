"""Statistics of the study: intervals over seeds, paired gains clustered by prompt, paired-by-seed contrasts, Holm.

* Over seeds (runs are the replicates): ``mean +- t_{0.975, n-1} s / sqrt(n)`` (:func:`mean_ci`; none for n < 2),
  Welch's interval for two independent sets of runs (:func:`welch_ci`), and, when two conditions share their
  seeds, the paired interval over the seed-wise differences (:func:`paired_seed_ci`: a paired t-test, which
  removes what a seed does to both conditions, e.g. its prompt draws); Fieller's interval for the ratio of two
  independent means (:func:`ratio_ci`, the benchmarks' speed-ups); a paired equivalence test against a margin fixed in
  advance (:func:`paired_tost`), so "no difference detected" can become "equivalent within +-m".
* Within one run (eval images are prompts x seeds, the same ones at every eval): the per-image gain
  ``d = after - before`` and its standard error *clustered by prompt* (:func:`clustered_mean_se`), because
  the images of one prompt are not independent of each other.
* Multiplicity: Holm's step-down adjustment (:func:`holm`) over the pre-registered primary contrasts.

Matched-reward levels are in :mod:`ddpo_study.report.levels`.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import pandas as pd


# ================================================================================================ over seeds
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


def ratio_ci(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """(mean(a) / mean(b), low, high): Fieller's 95% interval for a ratio of two independent means.

    Fieller, not a delta method or a bootstrap, because with 3 seeds a side those are too narrow and the
    denominator may be barely positive. The bounds solve ``(m_a - R m_b)^2 = t^2 (v_a + R^2 v_b)`` with
    ``v = s^2 / n`` and t at ``min(n_a, n_b) - 1`` degrees of freedom (conservative). When the denominator's own
    interval reaches 0 (``m_b^2 <= t^2 v_b``) the set is unbounded: the bounds are -inf / +inf.
    """
    a = np.asarray([v for v in a if np.isfinite(v)], dtype=float)
    b = np.asarray([v for v in b if np.isfinite(v)], dtype=float)
    if len(a) == 0 or len(b) == 0 or b.mean() == 0:
        return math.nan, math.nan, math.nan
    ratio = float(a.mean() / b.mean())
    if len(a) < 2 or len(b) < 2:
        return ratio, math.nan, math.nan
    ma, mb = float(a.mean()), float(b.mean())
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    t2 = t_quantile(min(len(a), len(b)) - 1) ** 2
    qa, qb, qc = mb * mb - t2 * vb, -2 * ma * mb, ma * ma - t2 * va   # quadratic in R
    disc = qb * qb - 4 * qa * qc
    if qa <= 0 or disc < 0:
        return ratio, -math.inf, math.inf
    root = math.sqrt(disc)
    return ratio, (-qb - root) / (2 * qa), (-qb + root) / (2 * qa)


def _seed_differences(a: pd.Series, b: pd.Series) -> tuple[list, np.ndarray]:
    """The seeds finite on both sides and the seed-wise differences ``a - b`` there."""
    a, b = pd.Series(a, dtype=float).dropna(), pd.Series(b, dtype=float).dropna()
    seeds = sorted(set(a.index) & set(b.index))
    return seeds, np.array([a[s] - b[s] for s in seeds], dtype=float)


def paired_seed_ci(a: pd.Series, b: pd.Series, level: float = 0.95) -> dict[str, float]:
    """Paired-by-seed contrast of two conditions: ``a`` and ``b`` map seed -> one run's value.

    Only seeds present (and finite) on both sides count. Returns ``n`` (common seeds), ``mean_a``, ``mean_b``,
    ``difference`` (mean of the seed-wise differences a - b), its ``level`` t-interval ``low``/``high``
    (``mean +- t_{n-1} sd / sqrt(n)``; NaN for n < 2) and the two-sided paired t-test ``p`` (NaN for n < 2;
    0 or 1 when every difference is the same).
    """
    a, b = pd.Series(a, dtype=float).dropna(), pd.Series(b, dtype=float).dropna()
    seeds, d = _seed_differences(a, b)
    n = len(d)
    out = {"n": n, "mean_a": float(a[seeds].mean()) if n else math.nan,
           "mean_b": float(b[seeds].mean()) if n else math.nan, "difference": float(d.mean()) if n else math.nan,
           "low": math.nan, "high": math.nan, "p": math.nan}
    if n < 2:
        return out
    se = float(d.std(ddof=1)) / math.sqrt(n)
    if se <= 1e-12 * max(1.0, float(np.abs(d).max())):  # every difference the same (up to float rounding)
        return {**out, "low": out["difference"], "high": out["difference"], "p": 1.0 if out["difference"] == 0 else 0.0}
    from scipy.stats import t

    half = t_quantile(n - 1, 0.5 + level / 2) * se
    p = float(2 * t.sf(abs(out["difference"]) / se, n - 1))
    return {**out, "low": out["difference"] - half, "high": out["difference"] + half, "p": p}


def paired_tost(a: pd.Series, b: pd.Series, margin: float) -> dict[str, float]:
    """Paired equivalence test of two conditions (seed -> value), two one-sided t-tests against ``+-margin``.

    H0: ``|mean(a - b)| >= margin``. ``p`` is the larger of the two one-sided p-values (Schuirmann's TOST);
    ``p < alpha`` exactly when the ``1 - 2 alpha`` paired interval (``low``, ``high``: the 90% one for alpha
    0.05) lies inside ``(-margin, margin)``. NaN for fewer than 2 common seeds.
    """
    res = paired_seed_ci(a, b, level=0.90)
    out = {"n": res["n"], "difference": res["difference"], "low": res["low"], "high": res["high"], "p": math.nan}
    if res["n"] < 2:
        return out
    _, d = _seed_differences(a, b)
    se = float(d.std(ddof=1)) / math.sqrt(len(d))
    if se <= 1e-12 * max(1.0, float(np.abs(d).max())):
        return {**out, "p": 0.0 if abs(out["difference"]) < margin else 1.0}
    from scipy.stats import t

    df = len(d) - 1
    p_low = float(t.sf((out["difference"] + margin) / se, df))   # H0: mean <= -margin
    p_high = float(t.cdf((out["difference"] - margin) / se, df))  # H0: mean >= +margin
    return {**out, "p": max(p_low, p_high)}


def one_sided_gain_p(gains: Sequence[float]) -> float:
    """One-sided t-test p-value of ``mean(gains) > 0`` over runs (NaN for fewer than 2 finite values)."""
    x = np.asarray([g for g in gains if np.isfinite(g)], dtype=float)
    if len(x) < 2:
        return math.nan
    se = float(x.std(ddof=1)) / math.sqrt(len(x))
    if se <= 1e-12 * max(1.0, float(np.abs(x).max())):
        return 0.0 if x.mean() > 0 else 1.0
    from scipy.stats import t

    return float(t.sf(x.mean() / se, len(x) - 1))


def aggregate(df: pd.DataFrame, by: Sequence[str], metric: str) -> pd.DataFrame:
    """Mean and 95% CI of ``metric`` over the rows of each ``by`` group (seeds, usually)."""
    rows = []
    if metric in df:
        for key, group in df.dropna(subset=[metric]).groupby(list(by), sort=False):
            key = key if isinstance(key, tuple) else (key,)
            m, lo, hi, n = mean_ci(group[metric])
            rows.append({**dict(zip(by, key)), "mean": m, "low": lo, "high": hi, "n": n})
    return pd.DataFrame(rows, columns=[*by, "mean", "low", "high", "n"])


# ================================================================================================ within a run
def clustered_mean_se(values: np.ndarray) -> tuple[float, float, int]:
    """(mean, cluster-robust SE, clusters) of ``values`` shaped (clusters, members), e.g. prompts x seeds.

    The CR1 (Liang-Zeger with the small-sample factor G / (G - 1)) standard error of a mean, NaN entries left out:

        mean = sum_i x_i / N,   u_g = sum_{i in g} (x_i - mean),   SE^2 = G / (G - 1) * sum_g u_g^2 / N^2

    over the G clusters with at least one value and the N values. With equal cluster sizes it equals the
    standard error of the G cluster means, ``sd(cluster means) / sqrt(G)``. NaN SE for G < 2.
    """
    x = np.asarray(values, dtype=float)
    x = x.reshape(len(x), -1)
    finite = np.isfinite(x)
    n = int(finite.sum())
    if n == 0:
        return math.nan, math.nan, 0
    mean = float(x[finite].mean())
    used = finite.any(axis=1)
    g = int(used.sum())
    if g < 2:
        return mean, math.nan, g
    u = np.where(finite, x - mean, 0.0).sum(axis=1)[used]
    se = math.sqrt(g / (g - 1) * float((u**2).sum()) / n**2)
    return mean, se, g


def paired_gain(before: np.ndarray, after: np.ndarray) -> dict[str, float]:
    """Per-image paired gain ``after - before`` (both prompts x seeds): mean, SE clustered by prompt
    (:func:`clustered_mean_se`) and ``z = gain / SE``, plus the SE and z that treat every image as independent
    (``gain_se_iid = sd(d) / sqrt(n)``, ``z_iid``), which overstate the evidence when a prompt's images move
    together."""
    before, after = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    if before.shape != after.shape:
        raise ValueError(f"before {before.shape} and after {after.shape} must have the same shape")
    d = (after - before).reshape(len(after), -1)
    gain, se, clusters = clustered_mean_se(d)
    flat = d[np.isfinite(d)]
    se_iid = float(flat.std(ddof=1) / math.sqrt(len(flat))) if len(flat) > 1 else math.nan

    def z(s: float) -> float:
        return gain / s if np.isfinite(s) and s > 0 else math.nan

    return {"gain": gain, "gain_se": se, "z": z(se), "gain_se_iid": se_iid, "z_iid": z(se_iid),
            "n_prompts": clusters, "n_images": len(flat)}


def paired_seeds_needed(differences: Sequence[float], alpha: float = 0.05, power: float = 0.8,
                        max_n: int = 10_000) -> float:
    """Seeds a two-sided paired t-test at ``alpha`` needs for ``power`` if the true effect were the one observed
    (a pilot's ``mean / sd`` of the seed-wise differences): the smallest n with noncentral-t power >= ``power``.
    NaN for fewer than 2 finite differences or a zero mean; ``inf`` beyond ``max_n``. Optimistic when the
    pilot's effect is itself a lucky draw, so read it as "at least"."""
    from scipy.stats import nct, t

    d = np.asarray([x for x in differences if np.isfinite(x)], dtype=float)
    if len(d) < 2 or d.mean() == 0:
        return math.nan
    sd = float(d.std(ddof=1))
    if sd == 0:
        return 2.0
    effect = abs(float(d.mean())) / sd
    for n in range(2, max_n + 1):
        crit = t.ppf(1 - alpha / 2, n - 1)
        nc = effect * math.sqrt(n)
        if nct.sf(crit, n - 1, nc) + nct.cdf(-crit, n - 1, nc) >= power:
            return float(n)
    return math.inf


# ================================================================================================ multiplicity
def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order (NaN stays NaN and is not counted).

    With the m finite p-values sorted, ``p_(1) <= ... <= p_(m)``: ``adj_(k) = max_{j <= k} min(1, (m - j + 1) p_(j))``.
    Rejecting where ``adj < alpha`` controls the family-wise error rate at ``alpha``.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(len(p), math.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = len(idx)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda k: (p[k], k))):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()
