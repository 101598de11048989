"""Matched reward: reading a metric where runs first reach a common eval-reward level, per reward (and base model).

Comparing conditions at equal epochs mistakes a condition that trains faster for one that collapses more; so
conditions are compared where each run *first reaches* a reward level (linear interpolation between evals,
:func:`crossing`). Levels only mean something within one reward (a JPEG level is no aesthetic level) and from one
base model (the UNet toy and the flow toy start from different rewards), so every function here works per value of
the config key ``reward``, and of ``model`` where the runs start from several (a "reward scale").

Two kinds of levels:

* descriptive (:func:`reward_levels`, :func:`matched_runs`): fractions of the way from the base model's reward
  to the lowest (``top="common"``) or highest (``top="best"``) of the conditions' best seed-mean rewards;
* for a contrast of two conditions (:func:`matched_levels`), levels inside the range both reach *after both have
  moved* (:func:`condition_gain`, the rule below). The levels are ``base + f * (the smaller of the two
  conditions' gains)``; a level is *refused* when some run of either condition first reaches it no later than its
  first eval after its start epoch, i.e. when the reading would be interpolated between the base model (or, for
  progressive, the full-fine-tuning phase) and the first eval.

**"Moved"** (the rule since 2026-12-07, issue #38). A condition's start epoch is 0, or for progressive its
``progressive_switch_epoch`` (it is full fine-tuning until then; :func:`read_after_epoch`). At each of its evals
after the start, its runs' gains over their own epoch-0 reward get a one-sided t-test of ``mean > 0``
(:func:`~ddpo_study.report.stats.one_sided_gain_p`, >= 2 runs). The condition **moved** iff that test gives
``p < alpha`` at some eval. Its **gain**, which sets the levels, is the highest seed-mean gain *among the evals
where the test passes*, so a mean inflated by one diverging seed (where the seeds disagree and the test fails)
does not set the levels.

* Monotone in evals: appending evals (a longer run) only adds candidate evals and leaves the earlier ones' gains
  and p-values as they were, so a condition that moved stays moved, and its gain can only grow. Adding or
  removing *seeds* re-tests every eval and can change either way.
* The rule it replaces (until 2026-12-07) tested only the eval with the highest seed-mean gain. That could flip
  as evals were added: in ``toy_study`` the penalised LoRA runs (Q3) passed at epoch 20 (p 0.010), but the
  highest mean came at epoch 80, after one seed had broken, and failed there, so Q3 read "did not move".
* The test is per eval and unadjusted over the evals, so the rule is more permissive than the old one (a
  condition with many evals gets many chances to pass). That is acceptable for a gate: passing licenses a
  matched-reward comparison; it is not itself a claim. The claims are the contrasts read at the levels, each
  with its own CI over seeds (and Holm for the primary questions), and a reading interpolated before a
  condition's first eval after its start is still refused, whatever the gate says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from .results import _factors, conditions, eval_rows
from .stats import one_sided_gain_p

MATCH_FRACTIONS = (0.25, 0.5, 0.75)
REWARD_KEY = "reward"  # the config key naming a run's reward


# ================================================================================================ one run
def read_after_epoch(run: pd.DataFrame | pd.Series) -> int:
    """The epoch after which a run is read: 0, or ``progressive_switch_epoch`` for progressive runs."""
    row = run.iloc[0] if isinstance(run, pd.DataFrame) else run
    if row.get("mode") == "progressive" and pd.notna(row.get("progressive_switch_epoch")):
        return int(row["progressive_switch_epoch"])
    return 0


def crossing(run: pd.DataFrame, level: float, metric: str, reward: str = "reward_mean") -> tuple[float, float, float]:
    """(metric, epoch, lower_epoch) where one run's eval reward first reaches ``level``, linearly interpolated
    between the eval before (at ``lower_epoch``) and the first eval at or above the level. At the first eval
    ``lower_epoch`` is that eval's epoch. All NaN if the run never reaches it. ``run``: that run's eval rows."""
    r = run.dropna(subset=[reward, metric]).sort_values("epoch")
    rew, val, ep = r[reward].to_numpy(float), r[metric].to_numpy(float), r["epoch"].to_numpy(float)
    for j in range(len(rew)):
        if rew[j] >= level:
            if j == 0:
                return float(val[0]), float(ep[0]), float(ep[0])
            t = (level - rew[j - 1]) / (rew[j] - rew[j - 1])
            return (float(val[j - 1] + t * (val[j] - val[j - 1])), float(ep[j - 1] + t * (ep[j] - ep[j - 1])),
                    float(ep[j - 1]))
    return math.nan, math.nan, math.nan


# ================================================================================================ descriptive levels
MODEL_KEY = "model"  # the config key naming a run's base model


def _scales(df: pd.DataFrame) -> pd.Series:
    """Each row's reward scale: its reward's name, and its base model's when the runs start from several (levels
    are fractions of the way from a base model's reward, and two base models score differently on one reward)."""
    names = df[REWARD_KEY].astype(str)
    if MODEL_KEY in df and df[MODEL_KEY].nunique() > 1:
        names = names + " (" + df[MODEL_KEY].astype(str) + ")"
    return names


def reward_names(df: pd.DataFrame) -> list[str]:
    """The reward scales of the runs in ``df`` (config key ``reward``, with the base model's name when the runs
    start from several: :func:`_scales`), sorted; [""] when the column is absent."""
    if REWARD_KEY not in df or df.empty:
        return [""]
    return sorted(_scales(df).unique())


def by_reward(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """``df`` split by reward scale (see :func:`reward_names`), attrs kept."""
    if REWARD_KEY not in df or df.empty:
        return {"": df}
    out = {}
    scales = _scales(df)
    for name in sorted(scales.unique()):
        part = df[scales == name]
        part.attrs = df.attrs
        out[name] = part
    return out


def reward_levels(df: pd.DataFrame, fractions: Sequence[float] = MATCH_FRACTIONS,
                  reward: str = "reward_mean", top: str = "common") -> list[float]:
    """Reward levels of one reward: fractions of the way from the base reward to a target.

    ``top="common"``: the lowest of the conditions' best (seed-mean) rewards, a level every condition reaches;
    empty when some condition never improves on the base. ``top="best"``: the highest of them (not every
    condition reaches it). Raises ValueError when ``df`` holds runs of several rewards (:func:`levels_by_reward`).
    """
    if top not in ("common", "best"):
        raise ValueError(f"top must be 'common' or 'best', got {top!r}")
    names = reward_names(df)
    if len(names) > 1:
        raise ValueError(f"runs of several rewards {names}: levels are per reward (use levels_by_reward)")
    ev = eval_rows(df, reward)
    if ev.empty:
        return []
    base = float(ev[ev["epoch"] == 0][reward].mean())
    best = ev.groupby(["condition", "epoch"])[reward].mean().groupby(level=0).max()
    target = float(best.min() if top == "common" else best.max())
    if not np.isfinite(base) or not np.isfinite(target) or target <= base:
        return []
    return [base + f * (target - base) for f in fractions]


def levels_by_reward(df: pd.DataFrame, fractions: Sequence[float] = MATCH_FRACTIONS,
                     top: str = "common") -> dict[str, list[float]]:
    """:func:`reward_levels` of each reward's runs."""
    return {name: reward_levels(part, fractions, top=top) for name, part in by_reward(df).items()}


def matched_runs(df: pd.DataFrame, metric: str = "cross_div_clip", levels: Sequence[float] | None = None,
                 fractions: Sequence[float] = MATCH_FRACTIONS, top: str = "common") -> pd.DataFrame:
    """Per run and reward level: ``metric`` and the epoch at which the run first reaches the level.

    Levels: ``levels`` for every run, or else each reward's own :func:`reward_levels`. ``early`` marks a reading
    interpolated before the run's first eval after its start epoch (:func:`read_after_epoch`)."""
    rows = []
    parts = {"": df} if levels is not None else by_reward(df)
    for name, part in parts.items():
        lv = list(levels) if levels is not None else reward_levels(part, fractions, top=top)
        fr = list(fractions) if len(fractions) == len(lv) else [math.nan] * len(lv)
        for cell, run in eval_rows(part).groupby("cell", sort=False):
            first = run.iloc[0]
            start = read_after_epoch(run)
            for frac, level in zip(fr, lv):
                value, epoch, lower = crossing(run, level, metric)
                rows.append({"cell": cell, "reward": name or first.get(REWARD_KEY, name), "condition": first["condition"],
                             "condition_order": first["condition_order"], "seed": first.get("seed"),
                             "fraction": frac, "reward_level": level, metric: value, "epoch_reached": epoch,
                             "early": bool(np.isfinite(lower) and lower <= start),
                             **{k: first[k] for k in _factors(df) if k != REWARD_KEY}})
    return pd.DataFrame(rows)


# ================================================================================================ two conditions
@dataclass(frozen=True)
class ConditionGain:
    """A condition's gain over the base after its start epoch, and whether it moved (see the module doc).

    Moved: ``gain``, ``epoch``, ``n``, ``p`` are those of the highest seed-mean gain among the evals whose
    one-sided test passed, ``first_epoch`` the first eval that passed. Not moved: those of the highest seed-mean
    gain among all its evals after ``start`` (what the old rule tested), ``first_epoch`` NaN."""

    label: str
    gain: float
    epoch: float
    n: int  # runs with an eval there
    p: float  # one-sided t-test of the runs' gains there
    start: int
    moved: bool
    first_epoch: float = math.nan  # the first eval after `start` at which the test passed
    alpha: float = 0.05
    evals: int = 0  # evals after `start` (any number of runs)
    tested: int = 0  # of them, evals with >= 2 runs, where the test can be computed
    passed: int = 0  # of them, evals where the test passes

    def describe(self) -> str:
        after = "" if self.start == 0 else f" after the switch (epoch {self.start})"
        if not np.isfinite(self.gain):
            return f"{self.label}: no eval{after or ' after epoch 0'}"
        if self.tested == 0:
            return f"{self.label}: mean gain {self.gain:+.3g}{after} from {self.n} seed (needs >= 2 to test)"
        at = f"at epoch {self.epoch:g}, one-sided p {self.p:.2g} over {self.n} seeds"
        if self.moved:
            return (f"{self.label}: moved from epoch {self.first_epoch:g} (first eval{after} with one-sided "
                    f"p < {self.alpha:g}); highest mean gain where it passes {self.gain:+.3g} {at}")
        return (f"{self.label}: one-sided p >= {self.alpha:g} at each of {self.tested} evals{after}; highest mean "
                f"gain {self.gain:+.3g} {at}")


@dataclass(frozen=True)
class Level:
    fraction: float
    value: float
    refused: str = ""  # why it is not read ("" when it is)


@dataclass(frozen=True)
class MatchedLevels:
    """The levels at which two conditions are compared, or ``reason`` when there are none."""

    base: float
    gains: tuple[ConditionGain, ...]
    levels: tuple[Level, ...] = ()
    reason: str = ""


def condition_gain(ev: pd.DataFrame, label: str, alpha: float = 0.05, reward: str = "reward_mean") -> ConditionGain:
    """:class:`ConditionGain` of one condition's eval rows (all its runs): the "moved" rule of the module doc."""
    gains = []
    start = 0
    for _, run in ev.dropna(subset=[reward]).groupby("cell", sort=False):
        start = read_after_epoch(run)
        base = run.loc[run["epoch"] == 0, reward]
        if base.empty:
            continue
        after = run[run["epoch"] > start]
        gains.append(pd.Series(after[reward].to_numpy(float) - float(base.iloc[0]), index=after["epoch"].to_numpy()))
    empty = ConditionGain(label, math.nan, math.nan, 0, math.nan, start, False, alpha=alpha)
    if not gains:
        return empty
    table = pd.concat(gains, axis=1).sort_index()  # epochs x runs
    table = table[table.notna().any(axis=1)]
    if table.empty:
        return empty
    at = [table.loc[e].dropna().to_numpy(float) for e in table.index]
    evals = pd.DataFrame({"mean": [float(x.mean()) for x in at], "n": [len(x) for x in at],
                          "p": [one_sided_gain_p(x) for x in at]}, index=table.index.astype(float))
    passed = evals[(evals["mean"] > 0) & (evals["p"] < alpha)]  # NaN p (< 2 runs) never passes
    moved = not passed.empty
    pick = passed if moved else evals
    epoch = float(pick["mean"].idxmax())
    return ConditionGain(label, float(pick.at[epoch, "mean"]), epoch, int(pick.at[epoch, "n"]),
                         float(pick.at[epoch, "p"]), start, moved,
                         first_epoch=float(passed.index.min()) if moved else math.nan, alpha=alpha,
                         evals=len(evals), tested=int((evals["n"] >= 2).sum()), passed=len(passed))


MOVED_COLUMNS = ["condition", "start_epoch", "evals", "evals_tested", "evals_passed", "moved", "first_epoch", "gain",
                 "gain_epoch", "n_seeds", "p"]


def moved_table(df: pd.DataFrame, alpha: float = 0.05, reward: str = "reward_mean") -> pd.DataFrame:
    """Per condition (all its runs), the "moved" rule's reading (:func:`condition_gain`): its evals after its start
    epoch, how many could be tested (>= 2 runs) and passed, the first that passed, and the gain that sets its
    matched levels with its epoch, runs and p (not moved: the highest seed-mean gain at any eval, as
    :class:`ConditionGain`). A question's two sides are usually conditions; its verdict is in the questions table."""
    ev = eval_rows(df, reward)
    rows = []
    for cond in conditions(ev):
        g = condition_gain(ev[ev["condition"] == cond], cond, alpha, reward)
        rows.append({"condition": cond, "start_epoch": g.start, "evals": g.evals, "evals_tested": g.tested,
                     "evals_passed": g.passed, "moved": g.moved, "first_epoch": g.first_epoch, "gain": g.gain,
                     "gain_epoch": g.epoch, "n_seeds": g.n, "p": g.p})
    return pd.DataFrame(rows, columns=MOVED_COLUMNS)


def matched_levels(ev_a: pd.DataFrame, ev_b: pd.DataFrame, labels: tuple[str, str] = ("a", "b"),
                   fractions: Sequence[float] = MATCH_FRACTIONS, alpha: float = 0.05,
                   reward: str = "reward_mean") -> MatchedLevels:
    """The reward levels at which conditions a and b (their runs' eval rows) are compared; see the module doc."""
    models = [sorted(ev[MODEL_KEY].astype(str).unique()) if MODEL_KEY in ev else [] for ev in (ev_a, ev_b)]
    if (models[0] and models[1] and models[0] != models[1]) or max(len(m) for m in models) > 1:
        return MatchedLevels(math.nan, (), reason=f"the conditions start from different base models ({labels[0]}: "
                             f"{', '.join(models[0])}; {labels[1]}: {', '.join(models[1])}): their rewards have no "
                             "common level")
    names = [reward_names(ev) for ev in (ev_a, ev_b)]
    if names[0] != names[1] or len(names[0]) > 1:
        return MatchedLevels(math.nan, (), reason=f"the conditions use different rewards ({labels[0]}: "
                             f"{', '.join(names[0])}; {labels[1]}: {', '.join(names[1])})")
    both = pd.concat([ev_a, ev_b])
    base = float(both.loc[both["epoch"] == 0, reward].mean())
    gains = tuple(condition_gain(ev, lab, alpha, reward) for ev, lab in zip((ev_a, ev_b), labels))
    still = [g for g in gains if not g.moved]
    if still:
        if all(g.tested == 0 for g in still):
            who = f"too few seeds to tell whether {' and '.join(g.label for g in still)} moved"
        else:
            who = "neither condition moved" if len(still) == 2 else f"{still[0].label} did not move"
        return MatchedLevels(base, gains, reason=f"{who} ({'; '.join(g.describe() for g in gains)})")
    smaller = min(g.gain for g in gains)
    levels = []
    for f in fractions:
        value = base + f * smaller
        early = []
        for ev, g in zip((ev_a, ev_b), gains):
            runs = [run for _, run in ev.groupby("cell", sort=False)]
            k = sum(1 for run in runs if _early(run, value, reward))
            if k:
                after = "epoch 0" if g.start == 0 else f"the switch (epoch {g.start})"
                early.append(f"{g.label}: {k} of {len(runs)} runs reach it by their first eval after {after}")
        levels.append(Level(f, value, "; ".join(early)))
    return MatchedLevels(base, gains, tuple(levels))


def _early(run: pd.DataFrame, level: float, reward: str) -> bool:
    """Does the run first reach ``level`` no later than its first eval after its start epoch?"""
    _, _, lower = crossing(run, level, reward, reward)
    return bool(np.isfinite(lower) and lower <= read_after_epoch(run))
