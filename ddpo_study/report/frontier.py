"""The remedies side by side on one reward-diversity frontier.

Every condition's final point: its eval-reward gain over the base model and its diversity (cross-prompt CLIP
distance, and the geometric judge's all-correct rate and distinct readings, which share nothing with the CLIP
that rewards and penalties use), each with a 95% CI over seeds. A remedy that keeps diversity by not learning
sits low on the gain axis, so each condition is also compared with a reference (plain LoRA) *at matched
reward*: half the smaller of the two conditions' gains, read after both have moved (the rules of
:func:`~ddpo_study.report.levels.matched_levels`), the difference paired by seed.

The inference-time remedies (:mod:`ddpo_study.report.remedies`) join the same frontier when the grid spec names
their folder (``frontier_remedies``): :func:`remedy_rows` gives each remedy point's final (gain, diversity) over
the runs it was applied to, and its difference from those runs' own training trajectories at equal reward (the
remedies' reference, since a remedy is applied to a finished run rather than trained as a condition).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..grid.questions import Question
from .figures import _palette
from .plotting import new_figure, styled
from .questions import evaluate_question
from .results import LABELS, conditions, eval_rows, final_rows
from .stats import mean_ci, paired_seed_ci

FRONTIER_METRICS = ("cross_div_clip", "judge_all", "judge_distinct_frac")
MATCHED_METRICS = ("judge_all", "cross_div_clip")  # the judge first: it is the referee
MATCHED_FRACTION = 0.5


def _selector(condition: str) -> dict[str, Any]:
    """Selects exactly ``condition``'s cells: by its label, not its factor values (two conditions may differ only
    in a key one mode never reads, which ``select_runs`` does not check)."""
    return {"condition": condition}


def final_gains(df: pd.DataFrame, metric: str = "reward_mean") -> pd.DataFrame:
    """Each finished cell's final row with ``reward_gain``: its final eval reward minus its own epoch-0 one."""
    fin = final_rows(df).copy()
    ev = eval_rows(df, metric)
    start = ev[ev["epoch"] == 0].groupby("cell")[metric].first()
    fin["reward_gain"] = fin[metric].to_numpy() - fin["cell"].map(start).to_numpy(dtype=float)
    return fin


def frontier_table(df: pd.DataFrame, reference: str | None = None, metrics: Sequence[str] = FRONTIER_METRICS,
                   matched: Sequence[str] = MATCHED_METRICS) -> pd.DataFrame:
    """One row per condition: final reward gain and ``metrics`` (mean, 95% CI over seeds), and for each of
    ``matched`` the paired difference from ``reference`` (default: the grid's first condition) at matched reward,
    with its CI and verdict (``not answered: ...`` when the pair never shares a level both reached)."""
    fin = final_gains(df)
    conds = conditions(fin)
    if not conds:
        return pd.DataFrame(columns=["condition", "seeds", "reward_gain"])
    reference = reference if reference is not None else conds[0]
    rows = []
    for cond in conds:
        g = fin[fin["condition"] == cond]
        row: dict[str, Any] = {"condition": cond, "reference": reference, "seeds": int(g["seed"].nunique()),
                               "epoch": int(g["epoch"].max()), **_means_with_ci(g, ("reward_gain", *metrics))}
        for m in matched:
            row.update(_matched_difference(df, cond, reference, m))
        rows.append(row)
    return pd.DataFrame(rows)


def _means_with_ci(g: pd.DataFrame, columns: Sequence[str]) -> dict[str, float]:
    """``col``, ``col_low``, ``col_high``: each present column's mean and 95% CI over ``g``'s rows (seeds)."""
    out = {}
    for m in columns:
        if m in g:
            mean, lo, hi, _ = mean_ci(g[m])
            out.update({m: mean, f"{m}_low": lo, f"{m}_high": hi})
    return out


def _unmatched(metric: str, verdict: str) -> dict[str, Any]:
    """A matched-difference entry with no numbers, only why (``reference``, ``not logged``)."""
    key = f"matched_{metric}"
    return {f"{key}_level": math.nan, f"{key}_diff": math.nan, f"{key}_low": math.nan, f"{key}_high": math.nan,
            f"{key}_verdict": verdict}


def _matched_difference(df: pd.DataFrame, cond: str, reference: str, metric: str) -> dict[str, Any]:
    key = f"matched_{metric}"
    if cond == reference or metric not in df:
        return _unmatched(metric, "reference" if cond == reference else "not logged")
    q = Question(id="frontier", text=f"{cond} vs {reference}", a=_selector(cond), b=_selector(reference),
                 where={}, metrics=(metric,), at="matched", fractions=(MATCHED_FRACTION,))
    row = evaluate_question(df, q)[0]
    verdict = row["verdict"] or (f"95% CI {row['ci_low']:.3g} to {row['ci_high']:.3g} (p {row['p']:.2g}, "
                                 f"unadjusted, {row['n_seeds']} seeds)" if np.isfinite(row["p"]) else "no p-value")
    return {f"{key}_level": row["reward_level"], f"{key}_diff": row["difference"], f"{key}_low": row["ci_low"],
            f"{key}_high": row["ci_high"], f"{key}_verdict": verdict}


REMEDY_REFERENCE = "own run at equal reward"  # the reference column of a remedy row
REMEDY_LABELS = {"scale": "inference: LoRA scale {value:g}", "switch": "inference: base for first {value:g} steps"}


def remedy_rows(remedies_dir: str | Path, metrics: Sequence[str] = FRONTIER_METRICS,
                matched: Sequence[str] = MATCHED_METRICS) -> pd.DataFrame:
    """The inference-time remedies of ``remedies_dir`` (``matched_points.csv`` and ``remedies.csv`` of
    :func:`~ddpo_study.report.remedies.write_remedies_summary`) as rows of :func:`frontier_table`: per remedy point
    its mean final reward gain and ``metrics`` with 95% CIs over the runs, and for each of ``matched`` the paired
    difference from the runs' own trajectories at equal reward. The tuned runs themselves (scale 1) come first, as
    the remedies' reference point. Empty when the folder has no results yet."""
    folder = Path(remedies_dir)
    if not (folder / "matched_points.csv").is_file() or not (folder / "remedies.csv").is_file():
        return pd.DataFrame()
    points = pd.read_csv(folder / "matched_points.csv")
    table = pd.read_csv(folder / "remedies.csv").set_index(["remedy", "value"])
    rows = []
    for (remedy, value), g in points.groupby(["remedy", "value"], sort=True):
        tuned = remedy == "scale" and value == 1.0
        if remedy == "scale" and value == 0.0:
            continue  # the base model: gain 0 by construction, the figure's black square
        label = "inference reference: the tuned LoRA runs" if tuned else REMEDY_LABELS.get(
            remedy, remedy + " {value:g}").format(value=value)
        row: dict[str, Any] = {"condition": label, "reference": "" if tuned else REMEDY_REFERENCE,
                               "seeds": int(g["seed"].nunique()), "epoch": int(g["final_epoch"].max()),
                               **_means_with_ci(g, ("reward_gain", *metrics))}
        t = table.loc[(remedy, value)] if (remedy, value) in table.index else None
        if t is not None and "reward_cost" in t:
            row.update({k: t[k] for k in ("reward_cost", "reward_cost_low", "reward_cost_high")})
        refused = t.get("refused") if t is not None else None
        refused = f"; refused: {refused}" if isinstance(refused, str) and refused else ""
        for m in matched:
            key = f"matched_{m}"
            if tuned or t is None or f"{m}_vs_train" not in t:
                row.update(_unmatched(m, "reference" if tuned else "not logged"))
                continue
            low, high, p = t[f"{m}_vs_train_low"], t[f"{m}_vs_train_high"], t[f"{m}_vs_train_p"]
            verdict = (f"95% CI {low:.3g} to {high:.3g} (p {p:.2g}, unadjusted, {int(t['read'])} of {int(t['runs'])} "
                       f"runs read{refused})" if np.isfinite(p) else f"not answered: {int(t['read'])} runs read{refused}")
            row.update({f"{key}_level": math.nan, f"{key}_diff": t[f"{m}_vs_train"], f"{key}_low": low,
                        f"{key}_high": high, f"{key}_verdict": verdict})
        rows.append(row)
    rows.sort(key=lambda r: not r["condition"].startswith("inference reference"))
    return pd.DataFrame(rows)


RANKED_BY = "judge_all"  # the referee: shares nothing with the CLIP that rewards and penalties use


def remedy_ranking(frontier: pd.DataFrame, df: pd.DataFrame, metric: str = RANKED_BY) -> pd.DataFrame:
    """The conditions of ``frontier`` (:func:`frontier_table`, with any :func:`remedy_rows`) ranked by the
    ``metric`` they keep at matched reward compared with their reference, with the reward each gives up.

    The cost in reward is the reference's final eval-reward gain minus the condition's, paired by seed (95% CI),
    for trained conditions; for an inference remedy, the tuned runs' final reward minus the remedy's, paired by
    run (``reward_cost`` of remedies.csv). Rows without a matched difference (a condition that did not move, a
    level refused) come last, unranked, with the verdict that says why; references are left out."""
    if frontier.empty:
        return pd.DataFrame(columns=["rank", "condition"])
    gains = final_gains(df).groupby(["condition", "seed"])["reward_gain"].first()
    trained = set(gains.index.get_level_values("condition"))
    rows = []
    for _, r in frontier.iterrows():
        if not r.get("reference") or r["reference"] == r["condition"]:
            continue  # a reference (the grid's, or the tuned runs the inference remedies start from)
        row = {"condition": r["condition"], "reference": r["reference"], "seeds": r["seeds"]}
        for m in (metric, *[m for m in MATCHED_METRICS if m != metric]):
            row.update({f"{m}_kept": r.get(f"matched_{m}_diff", math.nan),
                        f"{m}_kept_low": r.get(f"matched_{m}_low", math.nan),
                        f"{m}_kept_high": r.get(f"matched_{m}_high", math.nan)})
        if r["condition"] in trained and r["reference"] in trained:
            c = paired_seed_ci(gains.loc[r["reference"]], gains.loc[r["condition"]])
            row.update(reward_cost=c["difference"], reward_cost_low=c["low"], reward_cost_high=c["high"])
        else:
            row.update({k: r.get(k, math.nan) for k in ("reward_cost", "reward_cost_low", "reward_cost_high")})
        row["verdict"] = r.get(f"matched_{metric}_verdict", "")
        rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:
        return pd.DataFrame(columns=["rank", "condition"])
    answered = np.isfinite(out[f"{metric}_kept"].to_numpy(dtype=float))
    out = pd.concat([out[answered].sort_values(f"{metric}_kept", ascending=False, kind="stable"), out[~answered]])
    out.insert(0, "rank", [str(i + 1) for i in range(int(answered.sum()))] + [""] * int((~answered).sum()))
    return out.reset_index(drop=True)


@styled
def fig_frontier_points(df: pd.DataFrame, metrics: Sequence[str] = FRONTIER_METRICS,
                        remedies: pd.DataFrame | None = None):
    """Every condition's final (reward gain, diversity) point with 95% CIs over seeds on both axes; the base
    model sits at gain 0 (black). ``remedies``: :func:`remedy_rows`, drawn as diamonds beside the conditions."""
    table = frontier_table(df, metrics=metrics, matched=())
    extra = remedies if remedies is not None and not remedies.empty else None
    if extra is not None:
        table = pd.concat([table, extra], ignore_index=True)
    metrics = [m for m in metrics if m in table]
    fig = new_figure(5.0 * max(1, len(metrics)), 4.4)
    if table.empty or not metrics:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no finished runs yet", ha="center", va="center", transform=ax.transAxes)
        return fig
    colors = _palette(len(table))
    ev = eval_rows(df)
    base = ev[ev["epoch"] == 0]
    axes = fig.subplots(1, len(metrics), squeeze=False).ravel()
    for ax, metric in zip(axes, metrics):
        for color, (_, r) in zip(colors, table.iterrows()):
            xerr = _err(r, "reward_gain")
            yerr = _err(r, metric)
            marker = "D" if str(r["condition"]).startswith("inference") else "o"
            ax.errorbar(r["reward_gain"], r[metric], xerr=xerr, yerr=yerr, fmt=marker, color=color, capsize=3,
                        label=f"{r['condition']} (n={r['seeds']})")
        if metric in base:
            ax.plot(0.0, base[metric].mean(), marker="s", color="black", linestyle="none",
                    label="base model")
        ax.set_xlabel("final eval reward gain over the base model")
        ax.set_ylabel(LABELS.get(metric, metric))
        ax.set_title(f"{LABELS.get(metric, metric)} vs reward gain")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", title="condition (mean, 95% CI over seeds)")
    return fig


def _err(row: pd.Series, metric: str):
    lo, hi = row.get(f"{metric}_low", math.nan), row.get(f"{metric}_high", math.nan)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return None
    return [[row[metric] - lo], [hi - row[metric]]]
