"""Across methods: a grid whose conditions differ in algorithm or base model (study v3: DDPO and NFT on the UNet
toy, Flow-GRPO and NFT on the flow toy, each in LoRA and full mode), every condition read at the same reward
*gained* and at its final epoch, in one table (:func:`method_table`) and one figure (:func:`fig_methods`).

Why reward *gained*: the two toys start from different rewards, so an absolute reward level means a different
distance from each base model; a gain over each run's own epoch-0 eval reward is on one scale for every method.
The gain levels are fractions of the smallest gain among the conditions that set them (by default every condition
in the table; a study passes its primary conditions), each condition's gain by the "moved" rule of
:mod:`.levels` (:func:`~.levels.condition_gain`), so every level is one that each of those conditions reaches.
A run that first reaches a level no later than its first eval is counted in ``runs_early`` and left out of the
mean (its reading would be interpolated from the base model), as in the matched-reward table. The questions
(:mod:`.questions`) are the tests; this table describes.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .levels import condition_gain, crossing, read_after_epoch
from .plotting import new_figure, styled
from .results import LABELS, _factors, conditions, eval_rows, final_rows
from .stats import mean_ci
from .tables import paired_reward_gain, run_collapse

#: The metrics of the cross-method table: the judge first (the referee), then the CLIP readings.
METHOD_METRICS = ("judge_all", "judge_distinct", "retrieval_acc", "cross_div_clip")
METHOD_FRACTIONS = (0.25, 0.5)
#: The config keys that name a method's condition in the table.
METHOD_KEYS = ("variant", "algorithm", "model", "mode")


def has_methods(df: pd.DataFrame) -> bool:
    """Does the grid compare methods or base models (so the summary adds the cross-method table and figure)?"""
    return bool({"algorithm", "model"} & set(_factors(df)))


def gain_levels(df: pd.DataFrame, fractions: Sequence[float] = METHOD_FRACTIONS,
                by: Sequence[str] | None = None) -> tuple[list[float], str]:
    """(gain levels, how they were set): ``fractions`` of the smallest gain among the conditions ``by`` (default:
    all in ``df``) that moved; no levels, with the reason, when one of them did not move."""
    ev = eval_rows(df)
    names = list(by) if by is not None else conditions(ev)
    gains = [condition_gain(ev[ev["condition"] == c], c) for c in names]
    still = [g for g in gains if not g.moved]
    if not gains:
        return [], "none (no condition)"
    if still:
        few = [g.label for g in still if g.tested == 0]
        why = [f"{', '.join(few)}: too few seeds to test"] if few else []
        why += [f"{', '.join(g.label for g in still if g.tested > 0)} did not move"] if len(few) < len(still) else []
        return [], f"none ({'; '.join(why)})"
    smallest = min(gains, key=lambda g: g.gain)
    return ([f * smallest.gain for f in fractions],
            f"{', '.join(f'{f:.0%}' for f in fractions)} of the smallest gain, {smallest.gain:.3g} ({smallest.label})")


def _own_base(run: pd.DataFrame) -> float:
    base = run.loc[run["epoch"] == 0, "reward_mean"]
    return float(base.iloc[0]) if len(base) else math.nan


def _ci(row: dict[str, Any], name: str, values: Sequence[float]) -> None:
    mean, low, high, _ = mean_ci(values)
    row.update({name: mean, f"{name}_low": low, f"{name}_high": high})


def method_table(df: pd.DataFrame, metrics: Sequence[str] = METHOD_METRICS,
                 fractions: Sequence[float] = METHOD_FRACTIONS, by: Sequence[str] | None = None,
                 collapse: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Per condition (its variant, method, base model and mode), mean and 95% CI over seeds of the reward gain and
    of each metric at the epoch-0 eval (``at="base"``), at each gain level (:func:`gain_levels`) and at the final
    epoch; ``runs``, ``runs_read`` (in the means), ``runs_early`` (refused, see the module doc), ``runs_unreached``
    (never reached the level) and, on the final rows, the per-run collapse kinds (:func:`~.tables.run_collapse`,
    counted; ``collapse``: cell -> its kind where the caller has them already, as the learning table's column). A
    level is read on the evals where every metric was logged, so the refusal and the reading use the same evals."""
    metrics = [m for m in metrics if m in df]
    ev = eval_rows(df)
    levels, how = gain_levels(df, fractions, by)
    keys = [k for k in METHOD_KEYS if k in df]
    rows = []
    ev = ev.dropna(subset=list(metrics))
    for cond in conditions(ev):
        runs = [run.sort_values("epoch") for _, run in ev[ev["condition"] == cond].groupby("cell", sort=False)]
        first = runs[0].iloc[0]
        head = {"condition": cond, **{k: first[k] for k in keys}, "runs": len(runs)}
        base = [run[run["epoch"] == 0] for run in runs]
        row = {**head, "at": "base", "gain_level": 0.0, "runs_read": sum(len(b) > 0 for b in base), "runs_early": 0,
               "runs_unreached": 0}
        _ci(row, "reward_gain", [0.0 for b in base if len(b)])
        for m in metrics:
            _ci(row, m, [float(b[m].iloc[0]) for b in base if len(b)])
        rows.append(row)
        for f, level in zip(fractions, levels):
            read, early, unreached = [], 0, 0
            for run in runs:
                target = _own_base(run) + level
                _, _, lower = crossing(run, target, "reward_mean", "reward_mean")
                if not np.isfinite(lower):
                    unreached += 1
                    continue
                if lower <= read_after_epoch(run):
                    early += 1
                    continue
                read.append({m: crossing(run, target, m)[0] for m in metrics})
            row = {**head, "at": f"gain {f:.0%}", "gain_level": level, "runs_read": len(read), "runs_early": early,
                   "runs_unreached": unreached}
            _ci(row, "reward_gain", [level] * len(read))
            for m in metrics:
                _ci(row, m, [r[m] for r in read])
            rows.append(row)
        fin = final_rows(df[df["condition"] == cond])
        kinds, finished = [], set(fin["cell"])
        for cell, g in df[df["condition"] == cond].groupby("cell", sort=False):
            if cell in finished:
                kinds.append(collapse[cell] if collapse is not None and cell in collapse else
                             run_collapse(g, paired_reward_gain(g["cell_dir"].iloc[0])["z"]) if "cell_dir" in g
                             else "")
        row = {**head, "at": "final", "gain_level": math.nan, "runs_read": len(fin), "runs_early": 0,
               "runs_unreached": 0}
        gains = [float(r["reward_mean"]) - _own_base(ev[ev["cell"] == r["cell"]]) for _, r in fin.iterrows()]
        _ci(row, "reward_gain", gains)
        for m in metrics:
            _ci(row, m, fin[m].tolist())
        row["collapse"] = "; ".join(f"{k} {kinds.count(k)}" for k in sorted(set(kinds)) if k)
        rows.append(row)
    out = pd.DataFrame(rows)
    out.attrs["levels"] = how
    return out


@styled
def fig_methods(table: pd.DataFrame, metrics: Sequence[str] = METHOD_METRICS):
    """Each metric against the reward gained, per condition: its base, gain levels and final reading (hollow),
    mean and 95% CI over seeds; colour by method and base model, line style by mode."""
    from .figures import _MODE_STYLE, _palette, wrap_label

    metrics = [m for m in metrics if m in table and table[m].notna().any()]
    fig = new_figure(10, 6.5)
    if table.empty or not metrics:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes)
        return fig
    # one colour per variant (its LoRA and full conditions share it, told apart by line style); without variants,
    # per method and base model
    keys = ["variant"] if "variant" in table and table["variant"].notna().all() else \
        [k for k in ("algorithm", "model") if k in table]
    family = [tuple(str(r[k]) for k in keys) for _, r in table.iterrows()]
    colors = dict(zip(dict.fromkeys(family), _palette(len(set(family)))))
    table = table.assign(_family=family)
    axes = fig.subplots(math.ceil(len(metrics) / 2), min(2, len(metrics)), squeeze=False).ravel()
    for ax, m in zip(axes, metrics):
        for cond in table["condition"].drop_duplicates():
            t = table[table["condition"] == cond]
            first = t.iloc[0]
            style = {"color": colors[first["_family"]],
                     "linestyle": _MODE_STYLE.get(str(first.get("mode")), "-")}
            path = t[t["at"] != "final"].dropna(subset=[m])
            ax.plot(t["reward_gain"], t[m], linewidth=1, label=cond, **style)  # base -> levels -> final
            for part, face in ((path, style["color"]), (t[t["at"] == "final"].dropna(subset=[m]), "white")):
                ax.errorbar(part["reward_gain"], part[m], yerr=[part[m] - part[f"{m}_low"], part[f"{m}_high"] - part[m]],
                            xerr=None if face != "white" else [part["reward_gain"] - part["reward_gain_low"],
                                                               part["reward_gain_high"] - part["reward_gain"]],
                            fmt="o" if face != "white" else "s", markersize=4, markerfacecolor=face,
                            color=style["color"], linewidth=0.8, capsize=2)
        ax.set_title(wrap_label(LABELS.get(m, m), 40), fontsize=9)
        ax.set_xlabel("eval reward gained over the base model")
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", title="condition\n(mean, 95% CI over seeds)")
    fig.suptitle(wrap_label("each condition from its base (gain 0) through the gain levels to its final epoch "
                            f"(squares); levels: {table.attrs.get('levels', 'not recorded')}", 110), fontsize=9)
    return fig
