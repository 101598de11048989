"""Runs continued from another run's final adapter (``init_lora``): the joined curve and what it shows.

A continuation's epoch 0 is its original's last epoch (the same adapter, eval prompts and eval seeds), so the
two ``metrics.csv`` join into one curve: the original's epochs, then the continuation's epochs after 0 shifted by
the original's last epoch. :func:`continued_table` reads each continuation the way
``configs/toy_plateau_more.yaml``'s header pre-registered (C0-C3), with the learning table's rules
(:func:`~.tables.late_gain_fraction`, :data:`~.tables.PLATEAU_LATE_GAIN`, :func:`~.tables.run_collapse`) and its
paired gains clustered by prompt (:func:`~.stats.paired_gain`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from ..rundir import METRICS_FILE, check_finished, has_done, load_eval_rewards, load_metrics, read_config
from .plotting import new_figure, styled
from .results import LABELS, find_cells
from .stats import paired_gain
from .tables import PLATEAU_LATE_GAIN, largest_fall, late_gain_fraction, paired_reward_gain, run_collapse

#: C0: a continuation's epoch-0 eval reward must equal its original's last within this relative difference.
SAME_START_RTOL = 1e-3
#: C3: the prompt-following metrics read at the original's end and the continuation's.
CONTINUED_METRICS = ("reward_mean", "retrieval_acc", "cross_div_clip", "judge_all", "judge_distinct")


def original_of(cell_dir: str | Path) -> Path | None:
    """The run folder whose ``final/lora`` a run was started from (its config's ``init_lora``), or None.

    A relative ``init_lora`` is relative to where training ran (the repository root for a grid): it is looked up
    from the working directory, then from each folder above ``cell_dir``."""
    cell_dir = Path(cell_dir)
    cfg = read_config(cell_dir)
    if not cfg.get("init_lora"):
        return None
    path = Path(cfg["init_lora"])
    path = path.parent if path.suffix == ".safetensors" else path  # the file itself, or its lora/ folder
    run = path.parent.parent  # <run>/final/lora -> <run>
    for where in ([Path()] if run.is_absolute() else [Path.cwd(), *cell_dir.resolve().parents]):
        if (where / run / METRICS_FILE).is_file():
            return where / run
    raise FileNotFoundError(f"{cell_dir}: the run its init_lora came from ({run}) has no {METRICS_FILE} here")


def join_curves(original: pd.DataFrame, continued: pd.DataFrame) -> pd.DataFrame:
    """One curve: ``original``'s rows, then ``continued``'s after its epoch 0 with the epochs shifted by the
    original's last; ``part`` says which run a row came from."""
    shift = int(original["epoch"].max())
    later = continued[continued["epoch"] > 0].assign(epoch=lambda d: d["epoch"] + shift)
    return pd.concat([original.assign(part="original"), later.assign(part="continued")], ignore_index=True)


def _eval_row(run: pd.DataFrame, epoch: int) -> pd.Series:
    return run[(run["epoch"] == epoch) & run["reward_mean"].notna()].iloc[0]


def continued_row(cell_dir: str | Path) -> dict:
    """The reads C0-C3 of one continuation."""
    cell_dir = Path(cell_dir)
    original = original_of(cell_dir)
    check_finished(original)  # another grid's run, perhaps: its files are read here as strictly as the cell's
    o, c = (load_metrics(d) for d in (original, cell_dir))
    end_o, end_c = int(o["epoch"].max()), int(c["epoch"].max())
    start = abs(_eval_row(c, 0)["reward_mean"] / _eval_row(o, end_o)["reward_mean"] - 1)
    joined = join_curves(o, c)
    more = paired_reward_gain(cell_dir)  # C2: against its own epoch 0, the original's last model
    base, last = load_eval_rewards(original, 0), load_eval_rewards(cell_dir, end_c)
    total = paired_gain(base.reshape(len(base), -1), last.reshape(len(last), -1))  # against the base model
    late = late_gain_fraction(joined)
    later = joined[joined["part"] == "continued"]
    peak = later.loc[later["reward_mean"].idxmax()]
    row = {"cell": cell_dir.name, "original": original.name, "start_rel_diff": start,
           "same_start": bool(start <= SAME_START_RTOL), "epochs": f"{end_o}-{end_o + end_c}",
           "late_gain_frac_at_original_end": late_gain_fraction(o), "late_gain_frac_joined": late,
           "plateaued_joined": bool(total["z"] > 3 and np.isfinite(late) and late <= PLATEAU_LATE_GAIN),
           "gain_total": total["gain"], "gain_total_z": total["z"],
           "gain_more": more["gain"], "gain_more_se": more["gain_se"], "gain_more_z": more["z"],
           "collapse_more": run_collapse(c, more["z"]),
           "peak_more_epoch": float(peak["epoch"]), "peak_more_reward": float(peak["reward_mean"]),
           **{f"{k}_more": v for k, v in largest_fall(later).items()}}
    for metric in CONTINUED_METRICS:
        row[f"{metric}_{end_o}"] = float(_eval_row(o, end_o).get(metric, np.nan))
        row[f"{metric}_{end_o + end_c}"] = float(_eval_row(c, end_c).get(metric, np.nan))
    return row


def _finished(root: str | Path, cells: Iterable[str | Path] | None) -> list[Path]:
    """``cells`` (e.g. the undamaged ones a summary read), else every finished cell under ``root``."""
    return [Path(c) for c in cells] if cells is not None else [c for c in find_cells(root) if has_done(c)]


def continued_table(root: str | Path, cells: Iterable[str | Path] | None = None) -> pd.DataFrame:
    """:func:`continued_row` for every finished cell under ``root`` (or of ``cells``) started from an adapter."""
    rows = [continued_row(cell) for cell in _finished(root, cells) if original_of(cell) is not None]
    return pd.DataFrame(rows) if rows else pd.DataFrame({"cell": []})


def joined_curves(root: str | Path, cells: Iterable[str | Path] | None = None) -> pd.DataFrame:
    """The joined curves (:func:`join_curves`) of the finished continuations under ``root`` (or of ``cells``), one
    ``cell`` each."""
    parts = []
    for cell in _finished(root, cells):
        if (orig := original_of(cell)) is not None:
            o, c = (load_metrics(d) for d in (orig, cell))
            parts.append(join_curves(o, c).assign(cell=cell.name))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({"cell": []})


@styled
def fig_continued(joined: pd.DataFrame, metrics=("reward_mean", "retrieval_acc", "cross_div_clip", "judge_all")):
    """The joined curves, one line per run and one panel per metric; a dotted line where each continuation began."""
    fig = new_figure(11, 6.4)
    axes = fig.subplots(2, 2).ravel()
    ev = joined[joined["reward_mean"].notna()] if "reward_mean" in joined else joined
    for ax, metric in zip(axes, metrics):
        for cell, g in ev.groupby("cell", sort=True):
            line, = ax.plot(g["epoch"], g[metric], label=cell, lw=1.2)
            switch = g.loc[g["part"] == "original", "epoch"].max()
            ax.axvline(switch, color=line.get_color(), ls=":", lw=0.8)
        ax.set(xlabel="epoch (original, then continued)", ylabel=LABELS.get(metric, metric))
    axes[0].legend(fontsize="small")
    return fig


__all__ = ["CONTINUED_METRICS", "SAME_START_RTOL", "continued_row", "continued_table", "fig_continued", "join_curves",
           "joined_curves", "original_of"]
