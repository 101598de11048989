"""Inference-time remedies against early stopping, at the same reward (files only).

Input: :data:`POINTS_FILE` of :func:`ddpo_study.diagnose.remedy_sweep.run_remedies` (one row per run x remedy point: its
reward and metrics at the run's own eval prompts and seeds) and each run's ``metrics.csv``. A remedy point (the
LoRA at scale s, or the base model for the first k steps) buys diversity back by giving reward up; the honest
comparison is the same run *stopped earlier at the same reward*. So each point is compared with its own run's
training trajectory where the eval reward first reaches the point's reward (:func:`~.levels.crossing`); a
crossing before the first eval (interpolated from the base model) or a reward the run never reached is refused
and counted. Seeds are the replicates: one paired difference per run, a 95% t-interval over runs, Holm over the
spec's primary points.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..atomic import write_bytes_if_changed
from .levels import crossing, read_after_epoch
from .plotting import new_figure, save_figure, styled
from .results import LABELS, read_cell
from .stats import holm, mean_ci, paired_seed_ci, paired_seeds_needed

#: The sweep's points (in the remedies' output folder), which the sweep in :mod:`ddpo_study.diagnose` appends to.
POINTS_FILE = "points.csv"


def load_runs(points: pd.DataFrame, root: str | Path) -> dict[str, pd.DataFrame]:
    """Each swept run's eval rows (``metrics.csv`` under ``root``), by cell name."""
    out = {}
    for cell in points["cell"].unique():
        cfg, metrics = read_cell(Path(root) / cell)
        ev = metrics.dropna(subset=["reward_mean"]).sort_values("epoch").copy()
        ev["mode"] = cfg.get("mode")
        ev["progressive_switch_epoch"] = cfg.get("progressive_switch_epoch")
        out[cell] = ev
    return out


def matched_points(points: pd.DataFrame, runs: dict[str, pd.DataFrame], metrics: Sequence[str]) -> pd.DataFrame:
    """``points`` with, per metric, ``train_<metric>``: the run's training trajectory at the point's reward, and
    ``train_epoch`` / ``refused`` (why no reading: "never reached", "before the first eval")."""
    rows = []
    for _, p in points.iterrows():
        run = runs[p["cell"]]
        base = float(run.iloc[0]["reward_mean"])
        final = float(run.iloc[-1]["reward_mean"])
        # reward_cost: what the remedy gives up against the tuned model's own final eval (< 0: it gains reward)
        row = {**p.to_dict(), "reward_gain": p["reward_mean"] - base, "reward_cost": final - p["reward_mean"]}
        _, epoch, lower = crossing(run, float(p["reward_mean"]), "reward_mean")
        if p["reward_mean"] <= base:
            refused = "at or below the base model"
        elif not np.isfinite(epoch):
            refused = "never reached"
        elif lower <= read_after_epoch(run):
            refused = "before the first eval"
        else:
            refused = ""
        row.update({"train_epoch": epoch, "refused": refused})
        for m in metrics:
            value = crossing(run, float(p["reward_mean"]), m)[0] if not refused and m in run else math.nan
            row[f"train_{m}"] = value
        rows.append(row)
    return pd.DataFrame(rows)


def remedies_table(matched: pd.DataFrame, metrics: Sequence[str], primary: Sequence[tuple[str, float]]) -> pd.DataFrame:
    """One row per remedy point: reward gain over the base and reward cost against the tuned model (mean, 95% CI
    over runs), each metric's mean, and per metric the paired difference from the training trajectory at the same
    reward (CI, p; for the first metric also Holm-adjusted over the primary points, and the seeds a paired test at
    alpha 0.05 / #primaries would need for power 0.8 if the observed difference were the true one)."""
    rows = []
    primary = [(str(r), float(v)) for r, v in primary]
    for (remedy, value), g in matched.groupby(["remedy", "value"], sort=True):
        if remedy == "scale" and value in (0.0, 1.0):
            continue  # the base and the tuned model themselves: the checks, not remedies
        row = {"remedy": remedy, "value": value, "role": "primary" if (remedy, value) in primary else "exploratory",
               "runs": len(g), "read": int((g["refused"] == "").sum()),
               "refused": "; ".join(f"{n} {why}" for why, n in g.loc[g["refused"] != "", "refused"].value_counts()
                                    .sort_index().items())}
        for col in ("reward_gain", "reward_cost"):
            mean, lo, hi, _ = mean_ci(g[col])
            row.update({col: mean, f"{col}_low": lo, f"{col}_high": hi})
        ok = g[g["refused"] == ""].set_index("seed")
        for m in metrics:
            if m not in g:
                continue
            row[m] = float(g[m].mean())
            c = paired_seed_ci(ok[m], ok[f"train_{m}"])
            row.update({f"{m}_vs_train": c["difference"], f"{m}_vs_train_low": c["low"],
                        f"{m}_vs_train_high": c["high"], f"{m}_vs_train_p": c["p"]})
            if m == metrics[0]:  # at Holm's strictest level over the primaries
                diffs = (ok[m] - ok[f"train_{m}"]).to_numpy(float)
                row[f"{m}_seeds_needed"] = paired_seeds_needed(diffs, alpha=0.05 / max(1, len(primary)))
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    first = f"{metrics[0]}_vs_train_p"
    table[f"{metrics[0]}_vs_train_p_holm"] = math.nan
    is_primary = table["role"] == "primary"
    if is_primary.any() and first in table:
        # a primary point without a p-value (under 2 runs read) stays in the family as p = 1, never shrinks it
        family = table.loc[is_primary, first].fillna(1.0).tolist()
        table.loc[is_primary, f"{metrics[0]}_vs_train_p_holm"] = holm(family)
    order = {"primary": 0, "exploratory": 1}
    return table.sort_values(["role", "remedy", "value"], key=lambda s: s.map(order) if s.name == "role" else s,
                             kind="stable").reset_index(drop=True)


def checks_table(points: pd.DataFrame, runs: dict[str, pd.DataFrame], metrics: Sequence[str]) -> pd.DataFrame:
    """Per run: its scale-1 point minus its own final eval and its scale-0 point minus its epoch-0 eval, for the
    reward and each metric. Sampling is the same; what remains is the uint8 round trip of the sweep's images
    (training evals score the float images)."""
    rows = []
    for cell, g in points.groupby("cell", sort=False):
        run = runs[cell]
        row = {"cell": cell, "seed": int(g["seed"].iloc[0]), "final_epoch": int(run.iloc[-1]["epoch"])}
        for m in ("reward_mean", *metrics):
            for value, ev, tag in ((1.0, run.iloc[-1], "final"), (0.0, run.iloc[0], "base")):
                at = g[(g["remedy"] == "scale") & (g["value"] == value)]
                if m in g and m in ev and not at.empty:
                    row[f"{tag}_{m}_diff"] = float(at[m].iloc[0]) - float(ev[m])
        rows.append(row)
    return pd.DataFrame(rows).sort_values("seed").reset_index(drop=True)


@styled
def fig_remedies(matched: pd.DataFrame, runs: dict[str, pd.DataFrame], metrics: Sequence[str]):
    """Reward gain (x) against each metric (y): every run's training trajectory (grey, epoch by epoch) and the
    remedy points (mean over runs, 95% CIs on both axes)."""
    metrics = [m for m in metrics if m in matched]
    fig = new_figure(4.6 * max(1, len(metrics)), 4.2)
    axes = fig.subplots(1, max(1, len(metrics)), squeeze=False).ravel()
    styles = {"scale": ("o-", "tab:blue", "LoRA scale s"), "switch": ("s--", "tab:orange", "base for first k steps")}
    for ax, m in zip(axes, metrics):
        for i, (cell, run) in enumerate(runs.items()):
            if m in run:
                gain = run["reward_mean"] - run.iloc[0]["reward_mean"]
                ax.plot(gain, run[m], color="0.6", linewidth=0.8, alpha=0.8,
                        label="training trajectories (per run)" if i == 0 else None)
        for remedy, (fmt, color, name) in styles.items():
            g = matched[matched["remedy"] == remedy]
            if g.empty:
                continue
            agg = g.groupby("value").agg(x=("reward_gain", "mean"), y=(m, "mean"),
                                         xs=("reward_gain", _half), ys=(m, _half)).reset_index()
            ax.errorbar(agg["x"], agg["y"], xerr=agg["xs"], yerr=agg["ys"], fmt=fmt, color=color, capsize=3,
                        label=f"{name} (mean, 95% CI)")
            for _, r in agg.iterrows():
                tag = f"s={r['value']:g}" if remedy == "scale" else f"k={int(r['value'])}"
                ax.annotate(tag, (r["x"], r["y"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xlabel("eval reward gain over the base model")
        ax.set_ylabel(LABELS.get(m, m))
    axes[0].legend(loc="best")
    fig.suptitle("inference-time remedies vs the same runs stopped earlier")
    return fig


def _half(x: pd.Series) -> float:
    mean, lo, hi, _ = mean_ci(x)
    return (hi - lo) / 2 if np.isfinite(lo) else 0.0


def write_remedies_summary(out_dir: str | Path, root: str | Path, metrics: Sequence[str],
                           primary: Sequence[tuple[str, float]], keep: set[tuple[str, float]] | None = None
                           ) -> list[Path]:
    """``remedies.{csv,md}``, ``matched_points.csv``, ``checks.md`` and ``remedies.{png,pdf}`` in ``out_dir``
    from its ``points.csv``; the same inputs give the same bytes."""
    from .summary import CSV_FLOAT_FORMAT, to_markdown

    out = Path(out_dir)
    points = pd.read_csv(out / POINTS_FILE)
    if keep is not None:  # the spec's points only (a run swept before the spec changed keeps no stale rows here)
        points = points[[(r, float(v)) in keep for r, v in zip(points["remedy"], points["value"])]]
    runs = load_runs(points, root)
    matched = matched_points(points, runs, metrics)
    table = remedies_table(matched, metrics, primary)
    files = []
    for name, df in (("remedies", table), ("matched_points", matched), ("checks", checks_table(points, runs, metrics))):
        csv = out / f"{name}.csv"
        write_bytes_if_changed(csv, df.to_csv(index=False, float_format=CSV_FLOAT_FORMAT, lineterminator="\n").encode())
        write_bytes_if_changed(out / f"{name}.md", to_markdown(df).encode())
        files += [csv, out / f"{name}.md"]
    files += save_figure(fig_remedies(matched, runs, metrics), out / "remedies")
    return files
