"""Tables of a grid: final numbers per condition, one row per cell, did each run learn (paired gain clustered by
prompt) and each condition at matched reward levels (per reward). The questions: :mod:`ddpo_study.report.questions`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..rundir import load_eval_rewards, reward_epochs
from .levels import MATCH_FRACTIONS, matched_runs
from .results import FINAL_METRICS, conditions, eval_rows, final_rows
from .stats import mean_ci, paired_gain

#: The plateau rule (here and in ``benchmarks/time_to_plateau.py``): a run has plateaued at eval e when its gain
#: since the last eval at or before 75% of e (in epochs here, in CPU time there) is at most 15% of its gain at e.
PLATEAU_LATE_FRACTION = 0.75
PLATEAU_LATE_GAIN = 0.15


# ================================================================================================ tables
def final_table(df: pd.DataFrame, metrics: Sequence[str] = FINAL_METRICS) -> pd.DataFrame:
    """Per condition at the final epoch: mean and 95% CI over seeds of each metric (finished cells only)."""
    fin = final_rows(df)
    rows = []
    for cond in conditions(fin):
        g = fin[fin["condition"] == cond]
        row: dict[str, Any] = {"condition": cond, "seeds": len(g), "epoch": int(g["epoch"].max())}
        for m in metrics:
            if m in g:
                mean, lo, hi, _ = mean_ci(g[m])
                row.update({m: mean, f"{m}_low": lo, f"{m}_high": hi})
        rows.append(row)
    return pd.DataFrame(rows)


def cells_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: condition, seed, epochs, done, last eval numbers (and, when the guard stopped some run,
    ``stopped_at`` / ``kept_epoch``: the eval that fired and the one whose weights ``final/`` keeps); and, when the results were read with
    ``allow_damaged`` and some finished cells are damaged (``df.attrs["damaged"]``), a row for each of those with
    only its ``damaged`` column: what is wrong with it (its numbers are in no table)."""
    ev = eval_rows(df)
    metrics = ("reward_mean", "cross_div_clip", "retrieval_acc")
    rows = []
    for cell, g in df.groupby("cell", sort=False):
        e = ev[ev["cell"] == cell]
        last = e.loc[e["epoch"].idxmax()] if len(e) else g.iloc[-1]
        rows.append({"cell": cell, "condition": g["condition"].iloc[0], "seed": g["seed"].iloc[0],
                     "epochs_done": int(g["epoch"].max()), "epochs_total": int(g["num_epochs"].iloc[0]),
                     "done": bool(g["done"].iloc[0]), **{m: last.get(m, math.nan) for m in metrics},
                     **({k: g[k].iloc[0] for k in ("stopped_at", "kept_epoch")} if "stopped_at" in g else {})})
    damaged = df.attrs.get("damaged") or {}
    if damaged:  # the column only then: a summary of sound cells keeps its bytes
        rows = [{**r, "damaged": ""} for r in rows]
        rows += [{"cell": cell, "condition": "", "seed": math.nan, "epochs_done": math.nan, "epochs_total": math.nan,
                  "done": True, **{m: math.nan for m in metrics}, "damaged": why}
                 for cell, why in sorted(damaged.items())]
    return pd.DataFrame(rows)


def paired_reward_gain(cell_dir: str | Path, epoch: int | None = None) -> dict[str, float]:
    """Per-image eval reward gain of a run from epoch 0 (base model) to ``epoch`` (default: its last eval).

    The eval set is the same prompts x seeds at every evaluation, so each image has a before/after pair;
    ``gain_se`` is the standard error of the mean paired difference *clustered by prompt* (the images of one
    prompt move together; :func:`~ddpo_study.report.stats.clustered_mean_se`) and ``z`` the gain in those
    standard errors (> 3: it learned); ``gain_se_iid`` / ``z_iid`` treat the images as independent. Reads the
    per-image rewards of ``eval/epoch_XXXX.rewards.npz`` or ``eval/epoch_XXXX.npz``
    (:func:`~ddpo_study.rundir.load_eval_rewards`); NaNs when they are missing.
    """
    cell_dir = Path(cell_dir)
    epochs = reward_epochs(cell_dir)
    epoch = epochs[-1] if epoch is None and epochs else epoch
    nan = {"epoch": epoch if epoch is not None else math.nan, "reward_0": math.nan, "reward_end": math.nan,
           "gain": math.nan, "gain_se": math.nan, "z": math.nan, "gain_se_iid": math.nan, "z_iid": math.nan,
           "n_prompts": 0, "n_images": 0}
    if epoch is None or 0 not in epochs or epoch not in epochs:
        return nan
    rewards = [load_eval_rewards(cell_dir, e) for e in (0, epoch)]
    if any(r is None for r in rewards):
        return nan
    before, after = (r.reshape(len(r), -1) for r in rewards)  # prompts x seeds
    return {"epoch": epoch, "reward_0": float(before.mean()), "reward_end": float(after.mean()),
            **paired_gain(before, after)}


def late_gain_fraction(run: pd.DataFrame, metric: str = "reward_mean") -> float:
    """The share of a run's eval-reward gain (last eval vs epoch 0) made after the last eval at or before
    :data:`PLATEAU_LATE_FRACTION` of its last epoch (NaN without such an eval or a positive gain)."""
    ev = run[run[metric].notna()].sort_values("epoch")
    if len(ev) < 3 or ev["epoch"].iloc[0] != 0:
        return math.nan
    last = ev.iloc[-1]
    earlier = ev[(ev["epoch"] > 0) & (ev["epoch"] <= PLATEAU_LATE_FRACTION * last["epoch"])]
    gain = last[metric] - ev[metric].iloc[0]
    if earlier.empty or not gain > 0:
        return math.nan
    return float((last[metric] - earlier[metric].iloc[-1]) / gain)


def first_flat_epoch(run: pd.DataFrame, noise: float = 0.0, metric: str = "reward_mean") -> float:
    """The first eval epoch at which the plateau rule held on the curve up to it: at least 4 evals after epoch 0,
    a gain above ``2 * noise`` and :func:`late_gain_fraction` at most :data:`PLATEAU_LATE_GAIN` (NaN if never).

    The epoch analogue of ``benchmarks/time_to_plateau.py``'s stopping rule, which gates on each eval's own
    clustered z; here ``noise`` is one standard error of a gain (the learning table passes the last eval's), because
    a clone has the per-image rewards of the first and last eval only. A curve that levels off and climbs again
    has its first flat epoch early and no plateau at its end: read it with ``late_gain_frac``."""
    ev = run[run[metric].notna()].sort_values("epoch")
    if len(ev) < 5 or ev["epoch"].iloc[0] != 0:
        return math.nan
    base = ev[metric].iloc[0]
    for i in range(4, len(ev)):
        upto = ev.iloc[: i + 1]
        late = late_gain_fraction(upto, metric)
        if upto[metric].iloc[-1] - base > 2 * noise and np.isfinite(late) and late <= PLATEAU_LATE_GAIN:
            return float(upto["epoch"].iloc[-1])
    return math.nan


def peak_and_rise_after(run: pd.DataFrame, epoch: float = math.nan, metric: str = "reward_mean") -> dict[str, float]:
    """A run's best eval (``peak_epoch``, ``peak_reward``: the first eval at the maximum) and ``gain_after_flat``:
    how far the curve rose after ``epoch`` (its :func:`first_flat_epoch`), the best eval after it minus the eval at
    it (NaN without such an epoch; 0 or less when the first flat epoch was the plateau). A large value marks a
    false plateau: the curve stalled there and climbed again."""
    ev = run[run[metric].notna()].sort_values("epoch")
    if ev.empty:
        return {"peak_epoch": math.nan, "peak_reward": math.nan, "gain_after_flat": math.nan}
    best = ev.loc[ev[metric].idxmax()]
    after, at = ev[ev["epoch"] > epoch], ev[ev["epoch"] == epoch]
    rise = float(after[metric].max() - at[metric].iloc[0]) if len(after) and len(at) else math.nan
    return {"peak_epoch": float(best["epoch"]), "peak_reward": float(best[metric]), "gain_after_flat": rise}


def largest_fall(run: pd.DataFrame, metric: str = "reward_mean") -> dict[str, float]:
    """The largest drop of a run's eval curve from an eval to any later one: ``largest_fall`` (0 when it never
    fell) and the epochs it ran between (``fall_from_epoch``, ``fall_to_epoch``; NaN when it never fell). A fall
    tells a run that retreats (and may give its prompts back) from one that only levels off; read it against one
    eval's noise, the learning table's ``gain_se``."""
    ev = run[run[metric].notna()].sort_values("epoch")
    r, epochs = ev[metric].to_numpy(float), ev["epoch"].to_numpy(float)
    if len(r) < 2:
        return {"largest_fall": math.nan, "fall_from_epoch": math.nan, "fall_to_epoch": math.nan}
    high = np.maximum.accumulate(r)  # the best eval up to each one: a fall is measured from there
    drop = high - r
    j = int(np.argmax(drop))
    if not drop[j] > 0:
        return {"largest_fall": 0.0, "fall_from_epoch": math.nan, "fall_to_epoch": math.nan}
    i = int(np.flatnonzero(r[: j + 1] == high[j])[0])
    return {"largest_fall": float(drop[j]), "fall_from_epoch": float(epochs[i]), "fall_to_epoch": float(epochs[j])}


def step_kl_gmean(run: pd.DataFrame) -> float:
    """The geometric mean of a run's logged per-epoch step KL (``train_step_kl``): the policy step the controller
    held it to (NaN for runs without a controller's log). Geometric because the controller adapts the learning
    rate multiplicatively, so the step KL scatters on a log scale around its target."""
    kl = run["train_step_kl"].dropna() if "train_step_kl" in run else pd.Series(dtype=float)
    kl = kl[kl > 0]
    return float(np.exp(np.log(kl).mean())) if len(kl) else math.nan


def learning_table(df: pd.DataFrame) -> pd.DataFrame:
    """Did each run learn, and has it stopped? One row per cell: paired eval-reward gain since epoch 0
    (:func:`paired_reward_gain`) at its last evaluation, its standard error clustered by prompt, ``z``,
    ``learned`` (z > 3), ``finished`` (trained to its ``num_epochs``), ``late_gain_frac``
    (:func:`late_gain_fraction`) and ``plateaued`` (finished, learned, and at most :data:`PLATEAU_LATE_GAIN` of the
    gain came in the last quarter of the epochs), ``first_flat_epoch`` (:func:`first_flat_epoch`, with the
    last eval's standard error as the noise), the peak and the rise after the first flat epoch
    (:func:`peak_and_rise_after`), the largest fall (:func:`largest_fall`), the geometric mean step KL
    (:func:`step_kl_gmean`) and ``collapse`` (:func:`run_collapse`)."""
    rows = []
    for cell, g in df.groupby("cell", sort=False):
        gain = paired_reward_gain(g["cell_dir"].iloc[0])
        learned = bool(gain["z"] > 3) if np.isfinite(gain["z"]) else False
        late = late_gain_fraction(g)
        # a run still training has no plateau yet (its "last quarter" is of the epochs so far)
        finished = "num_epochs" not in g or bool((g["epoch"] == g["num_epochs"].iloc[0]).any())
        rows.append({"cell": cell, "condition": g["condition"].iloc[0], "seed": g["seed"].iloc[0], **gain,
                     "learned": learned, "finished": finished, "late_gain_frac": late,
                     "plateaued": bool(finished and learned and np.isfinite(late) and late <= PLATEAU_LATE_GAIN),
                     "first_flat_epoch": (flat := first_flat_epoch(g, gain["gain_se"] if np.isfinite(gain["gain_se"])
                                                                   else 0)),
                     **peak_and_rise_after(g, flat), **largest_fall(g), "step_kl_gmean": step_kl_gmean(g),
                     "collapse": run_collapse(g, gain["z"])})
    return pd.DataFrame(rows)


def run_collapse(run: pd.DataFrame, reward_z: float) -> str:
    """The run's last eval against its epoch 0 by :func:`ddpo_study.collapse.collapse_kind`: ``kept prompts``, or
    a collapse that ``maximised`` the reward, ``broke`` the model or came with ``no reward change``, by the paired
    reward gain's clustered z; ``""`` without the two evals."""
    from ..collapse import collapse_kind

    evals = run.dropna(subset=[c for c in ("cross_div_clip", "retrieval_acc") if c in run]).sort_values("epoch")
    if not {"cross_div_clip", "retrieval_acc"} <= set(run) or len(evals) < 2 or evals["epoch"].iloc[0] != 0:
        return ""
    base, last = evals.iloc[0], evals.iloc[-1]
    ratio = last["cross_div_clip"] / base["cross_div_clip"] if base["cross_div_clip"] else math.nan
    return collapse_kind(float(ratio), float(base["retrieval_acc"] - last["retrieval_acc"]), float(reward_z))


def matched_reward_table(df: pd.DataFrame, metric: str = "cross_div_clip",
                         fractions: Sequence[float] = MATCH_FRACTIONS) -> pd.DataFrame:
    """Each condition's ``metric`` at reward levels of its own reward: mean, 95% CI over seeds, runs reaching them.

    Per reward (config key ``reward``), the levels are 25/50/75% of the way from the base model to the best
    condition's seed-mean reward, so conditions that gain little show how few of their runs get there
    (``runs_reaching``). A run that first reaches a level no later than its first eval after its start epoch
    (0, or progressive's switch) is counted in ``runs_early`` and left out of the mean: its reading would be
    interpolated from the base model. The questions compare pairs at their own levels (:mod:`.questions`).
    """
    runs = matched_runs(df, metric, fractions=fractions, top="best")
    cols = ["reward", "condition", "fraction", "reward_level", f"{metric}_mean", f"{metric}_low", f"{metric}_high",
            "epoch_reached_mean", "runs_reaching", "runs_early", "runs"]
    if runs.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for (reward, cond, frac, level), g in runs.groupby(["reward", "condition", "fraction", "reward_level"],
                                                       sort=False):
        reached = g[g[metric].notna()]
        read = reached[~reached["early"]]
        m, lo, hi, n = mean_ci(read[metric])
        rows.append({"reward": reward, "condition": cond, "fraction": frac, "reward_level": level,
                     f"{metric}_mean": m, f"{metric}_low": lo, f"{metric}_high": hi,
                     "epoch_reached_mean": float(read["epoch_reached"].mean()) if n else math.nan,
                     "runs_reaching": len(reached), "runs_early": len(reached) - len(read), "runs": len(g)})
    return pd.DataFrame(rows, columns=cols)
