"""Tables of a grid: final numbers per condition, one row per cell, did each run learn, matched reward, and the
study's four questions (:data:`QUESTIONS`) answered from confidence intervals."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .results import FINAL_METRICS, _factors, _format_factor, _order_key, conditions, eval_epochs, eval_rows, final_rows
from .stats import MATCH_FRACTIONS, matched_runs, mean_ci, reward_levels, welch_ci


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
    """One row per cell: condition, seed, epochs, done, last eval numbers."""
    ev = eval_rows(df)
    rows = []
    for cell, g in df.groupby("cell", sort=False):
        e = ev[ev["cell"] == cell]
        last = e.loc[e["epoch"].idxmax()] if len(e) else g.iloc[-1]
        rows.append({"cell": cell, "condition": g["condition"].iloc[0], "seed": g["seed"].iloc[0],
                     "epochs_done": int(g["epoch"].max()), "epochs_total": int(g["num_epochs"].iloc[0]),
                     "done": bool(g["done"].iloc[0]),
                     **{m: last.get(m, math.nan) for m in ("reward_mean", "cross_div_clip", "retrieval_acc")}})
    return pd.DataFrame(rows)


def paired_reward_gain(cell_dir: str | Path, epoch: int | None = None) -> dict[str, float]:
    """Per-image eval reward gain of a run from epoch 0 (base model) to ``epoch`` (default: its last eval).

    The eval set is the same prompts x seeds at every evaluation, so each image has a before/after pair;
    the gain's standard error is that of the paired differences, ``sd(diff) / sqrt(n)``, and ``z`` is the
    gain in standard errors (> 3: it learned). Reads the ``rewards`` saved in ``eval/epoch_XXXX.npz``
    (written since the per-image rewards were added); NaNs when they are missing.
    """
    cell_dir = Path(cell_dir)
    epochs = eval_epochs(cell_dir)
    epoch = epochs[-1] if epoch is None and epochs else epoch
    nan = {"epoch": epoch if epoch is not None else math.nan, "reward_0": math.nan, "reward_end": math.nan,
           "gain": math.nan, "gain_se": math.nan, "z": math.nan, "n_images": 0}
    if epoch is None or 0 not in epochs or epoch not in epochs:
        return nan
    rewards = []
    for e in (0, epoch):
        with np.load(cell_dir / "eval" / f"epoch_{e:04d}.npz", allow_pickle=False) as data:
            if "rewards" not in data:
                return nan
            rewards.append(np.asarray(data["rewards"], dtype=np.float64).ravel())
    before, after = rewards
    diff = after - before
    se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else math.nan
    gain = float(diff.mean())
    z = gain / se if se and np.isfinite(se) and se > 0 else math.nan
    return {"epoch": epoch, "reward_0": float(before.mean()), "reward_end": float(after.mean()), "gain": gain,
            "gain_se": se, "z": z, "n_images": len(diff)}


def learning_table(df: pd.DataFrame) -> pd.DataFrame:
    """Did each run learn? One row per cell: paired eval-reward gain since epoch 0 (:func:`paired_reward_gain`)
    at its last evaluation, its standard error, ``z`` and ``learned`` (z > 3)."""
    rows = []
    for cell, g in df.groupby("cell", sort=False):
        gain = paired_reward_gain(g["cell_dir"].iloc[0])
        rows.append({"cell": cell, "condition": g["condition"].iloc[0], "seed": g["seed"].iloc[0], **gain,
                     "learned": bool(gain["z"] > 3) if np.isfinite(gain["z"]) else False})
    return pd.DataFrame(rows)


def matched_reward_table(df: pd.DataFrame, metric: str = "cross_div_clip",
                         fractions: Sequence[float] = MATCH_FRACTIONS) -> pd.DataFrame:
    """Each condition's ``metric`` at common reward levels: mean, 95% CI over seeds, runs reaching the level.

    The levels are 25/50/75% of the way to the best condition's (seed-mean) reward, so conditions that gain
    little or nothing show how few of their runs get there (``runs_reaching``) instead of emptying the table or
    pinning every level next to the base model. The four questions compare pairs at levels both reach.
    """
    runs = matched_runs(df, metric, fractions=fractions, top="best")
    cols = ["condition", "fraction", "reward_level", f"{metric}_mean", f"{metric}_low", f"{metric}_high",
            "epoch_reached_mean", "runs_reaching", "runs"]
    if runs.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for (cond, frac, level), g in runs.groupby(["condition", "fraction", "reward_level"], sort=False):
        m, lo, hi, n = mean_ci(g[metric])
        rows.append({"condition": cond, "fraction": frac, "reward_level": level, f"{metric}_mean": m,
                     f"{metric}_low": lo, f"{metric}_high": hi,
                     "epoch_reached_mean": float(g["epoch_reached"].mean()) if n else math.nan,
                     "runs_reaching": n, "runs": len(g)})
    return pd.DataFrame(rows, columns=cols)


def _reference(cells: pd.DataFrame, factor: str) -> Any:
    """The baseline value of a factor: its most frequent value; ties go to LoRA, the fewest prompts, the smallest."""
    counts = cells[factor].value_counts(sort=False)
    best = counts[counts == counts.max()].index.tolist()
    if factor == "mode" and "lora" in best:
        return "lora"
    return sorted(best, key=lambda v: _order_key(factor, v))[0]


# The four questions: factor, the two sides (a vs b), the metric, where it is read, and the direction that
# means "yes". Sides may be a value or one of "max"/"min" (numeric factors) or "most"/"fewest" (prompt sets).
QUESTIONS = (
    {"id": "Q1", "question": "Does LoRA collapse more than full fine-tuning at matched reward?",
     "factor": "mode", "a": "lora", "b": "full", "metric": "cross_div_clip", "at": "matched", "yes_if": "<0",
     "meaning": "LoRA's cross-prompt diversity is lower"},
    {"id": "Q2", "question": "Do 300+ training prompts help?",
     "factor": "prompt_set", "a": "most", "b": "fewest", "metric": "cross_div_clip", "at": "matched", "yes_if": ">0",
     "meaning": "more prompts keep more cross-prompt diversity"},
    {"id": "Q3", "question": "Does the diversity penalty help?",
     "factor": "diversity_lambda", "a": "max", "b": "min", "metric": "cross_div_clip", "at": "final", "yes_if": ">0",
     "meaning": "the penalty keeps more cross-prompt diversity at the final epoch"},
    {"id": "Q3 cost", "question": "What does the diversity penalty cost in reward?",
     "factor": "diversity_lambda", "a": "max", "b": "min", "metric": "reward_mean", "at": "final", "yes_if": "<0",
     "meaning": "the penalty lowers the final eval reward"},
    {"id": "Q4", "question": "Does progressive fine-tuning (full, then LoRA) help?",
     "factor": "mode", "a": "progressive", "b": "lora", "metric": "cross_div_clip", "at": "matched", "yes_if": ">0",
     "meaning": "progressive keeps more cross-prompt diversity than LoRA"},
)


def _side(cells: pd.DataFrame, factor: str, side: Any) -> Any:
    values = cells[factor].drop_duplicates().tolist()
    if side in ("max", "most"):
        return sorted(values, key=lambda v: _order_key(factor, v))[-1]
    if side in ("min", "fewest"):
        return sorted(values, key=lambda v: _order_key(factor, v))[0]
    return side


def _verdict(lo: float, hi: float, diff: float, yes_if: str) -> str:
    if not np.isfinite(diff):
        return "no data"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "no CI (needs >= 2 seeds per side)"
    sign = -1 if yes_if == "<0" else 1
    if (lo > 0 and sign > 0) or (hi < 0 and sign < 0):
        return "yes (95% CI excludes 0)"
    if (lo > 0 and sign < 0) or (hi < 0 and sign > 0):
        return "no: the opposite (95% CI excludes 0)"
    return "unclear (95% CI includes 0)"


def _run_values(df: pd.DataFrame, metric: str, at: str, levels: Sequence[float] = (),
                fractions: Sequence[float] = ()) -> pd.DataFrame:
    """Per run: ``metric`` at the final epoch (``at="final"``) or at each matched reward level."""
    if at == "final":
        fin = final_rows(df)
        out = fin[["cell", "condition", *_factors(df), "seed", metric]].copy() if metric in fin else pd.DataFrame()
        if not out.empty:
            out["fraction"], out["reward_level"] = math.nan, math.nan
        return out
    return matched_runs(df, metric, levels=levels, fractions=fractions)


def contrasts_table(df: pd.DataFrame, questions: Sequence[dict] = QUESTIONS,
                    fractions: Sequence[float] = MATCH_FRACTIONS) -> pd.DataFrame:
    """Every question's difference (a - b, Welch 95% CI) in every stratum of the other factors.

    Matched-reward rows use levels common to the two conditions compared (see :func:`reward_levels`).
    """
    factors = _factors(df)
    cells = df.drop_duplicates("cell")
    rows = []
    for q in questions:
        factor = q["factor"]
        if factor not in factors:
            continue
        a, b = _side(cells, factor, q["a"]), _side(cells, factor, q["b"])
        if a == b or a not in cells[factor].tolist() or b not in cells[factor].tolist():
            continue
        others = [f for f in factors if f != factor]
        strata = cells[others].drop_duplicates().to_dict("records") if others else [{}]
        for stratum in strata:
            mask = np.ones(len(df), dtype=bool)
            for k, v in stratum.items():
                mask &= (df[k] == v).to_numpy()
            sub = df[mask]
            sa, sb = sub[sub[factor] == a], sub[sub[factor] == b]
            if sa.empty or sb.empty:
                continue
            pair = pd.concat([sa, sb])
            if q["at"] == "matched":
                levels = reward_levels(pair, fractions)
                wheres = [("matched", f, lv) for f, lv in zip(fractions, levels)] or [("matched", math.nan, math.nan)]
            else:
                wheres = [("final", math.nan, math.nan)]
            for at, frac, level in wheres:
                if at == "matched" and not np.isfinite(level):
                    diff = lo = hi = math.nan
                    na = nb = 0
                else:
                    vals = _run_values(pair, q["metric"], at, [level] if at == "matched" else (),
                                       [frac] if at == "matched" else ())
                    va = vals[vals[factor] == a][q["metric"]] if not vals.empty else pd.Series(dtype=float)
                    vb = vals[vals[factor] == b][q["metric"]] if not vals.empty else pd.Series(dtype=float)
                    diff, lo, hi = welch_ci(va.tolist(), vb.tolist())
                    na, nb = int(va.notna().sum()), int(vb.notna().sum())
                where = ("final epoch" if at == "final" else
                         f"reward {level:.4g} ({frac:.0%} of the common gain)" if np.isfinite(level)
                         else "matched reward: no common reward gain")
                rows.append({"id": q["id"], "question": q["question"],
                             "comparison": f"{_format_factor(factor, a)} - {_format_factor(factor, b)}",
                             "stratum": ", ".join(_format_factor(k, v) for k, v in stratum.items()) or "all",
                             "metric": q["metric"], "where": where, "fraction": frac, "difference": diff,
                             "ci_low": lo, "ci_high": hi, "n_a": na, "n_b": nb,
                             "answer": _verdict(lo, hi, diff, q["yes_if"]), "yes_means": q["meaning"],
                             **{f"_{k}": v for k, v in stratum.items()}})
    return pd.DataFrame(rows)


def questions_table(df: pd.DataFrame, questions: Sequence[dict] = QUESTIONS) -> pd.DataFrame:
    """One row per question, read in the reference stratum (the issue's setting: LoRA, the fewest prompts, no
    penalty, and each other factor's most common value), at the middle matched-reward level or the final epoch.
    Answers come from the CIs; a question whose factor is not in the grid says so."""
    cols = ["id", "question", "comparison", "stratum", "metric", "where", "difference", "ci_low", "ci_high",
            "n_a", "n_b", "answer", "yes_means"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    contrasts = contrasts_table(df, questions)
    cells = df.drop_duplicates("cell")
    factors = _factors(df)
    mid = MATCH_FRACTIONS[len(MATCH_FRACTIONS) // 2]
    rows = []
    for q in questions:
        base = {"id": q["id"], "question": q["question"], "metric": q["metric"], "yes_means": q["meaning"]}
        sel = contrasts[contrasts["id"] == q["id"]] if not contrasts.empty else contrasts
        if sel.empty:
            rows.append({**base, "comparison": "", "stratum": "", "where": "", "difference": math.nan,
                         "ci_low": math.nan, "ci_high": math.nan, "n_a": 0, "n_b": 0,
                         "answer": f"not in this grid (needs both sides of {q['factor']!r})"})
            continue
        for f in factors:
            if f == q["factor"] or f"_{f}" not in sel:
                continue
            ref = _reference(cells, f)
            narrowed = sel[sel[f"_{f}"] == ref]
            sel = narrowed if not narrowed.empty else sel
        if q["at"] == "matched":
            at_mid = sel[np.isclose(sel["fraction"].astype(float), mid)]
            sel = at_mid if not at_mid.empty else sel
        rows.append({**base, **sel.iloc[0][[c for c in cols if c not in base]].to_dict()})
    return pd.DataFrame(rows, columns=cols)
