"""Summary figures of a grid (per condition, mean and 95% CI over seeds): reward and diversity curves, the
reward-diversity frontier, final-epoch bars and an image montage; and the helpers that lay eval images out."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from ..config import EVAL_SEED_BASE
from ..rundir import committed_eval_epochs
from .levels import reward_levels, reward_names
from .plotting import new_figure, styled
from .results import FINAL_METRICS, LABELS, _factors, cell_eval_images, conditions, eval_rows, final_rows
from .stats import aggregate, mean_ci


# ================================================================================================ figures: grid
def _palette(n: int):
    import seaborn as sns

    return sns.color_palette("colorblind" if n <= 10 else "tab20", max(n, 1))


_MODE_STYLE = {"lora": "-", "full": "--", "progressive": ":"}


def _cond_styles(df: pd.DataFrame) -> dict[str, dict]:
    conds = conditions(df)
    colors = _palette(len(conds))
    styles = {}
    for i, c in enumerate(conds):
        mode = df.loc[df["condition"] == c, "mode"].iloc[0] if "mode" in df else "lora"
        styles[c] = {"color": colors[i], "linestyle": _MODE_STYLE.get(mode, "-") if "mode" in _factors(df) else "-"}
    return styles


def _curves(fig, df: pd.DataFrame, metrics: Sequence[str], ncols: int = 2, chance: bool = True):
    metrics = [m for m in metrics if m in df and df[m].notna().any()]
    styles = _cond_styles(df)
    if not metrics:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes)
        return fig
    nrows = math.ceil(len(metrics) / ncols)
    axes = fig.subplots(nrows, min(ncols, len(metrics)), squeeze=False).ravel()
    for ax, metric in zip(axes, metrics):
        agg = aggregate(df, ["condition", "epoch"], metric)
        for cond in conditions(df):
            g = agg[agg["condition"] == cond].sort_values("epoch")
            if g.empty:
                continue
            st = styles[cond]
            ax.plot(g["epoch"], g["mean"], marker="o", markersize=3, label=cond, **st)
            ax.fill_between(g["epoch"], g["low"], g["high"], color=st["color"], alpha=0.15, linewidth=0)
        if chance and metric == "retrieval_acc" and "retrieval_chance" in df:
            ax.axhline(float(df["retrieval_chance"].dropna().mean()), color="0.4", linestyle="--", linewidth=1,
                       label="chance")
        ax.set_title(LABELS.get(metric, metric))
        ax.set_xlabel("epoch")
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    handles, labels = [], []
    for ax in axes[:len(metrics)]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="outside right upper", title="condition (mean, 95% CI over seeds)")
    return fig


@styled
def fig_reward_curves(df: pd.DataFrame):
    """Eval reward and train reward vs epoch, per condition (mean and 95% CI over seeds)."""
    fig = new_figure(11, 3.6)
    return _curves(fig, df, ["reward_mean", "train_reward_mean"], ncols=2)


@styled
def fig_diversity_curves(df: pd.DataFrame):
    """Within- and cross-prompt diversity (CLIP, pixel), prompt-retrieval accuracy and (toy world) the judge's
    prompt-following accuracy and distinct readings across prompts vs epoch, per condition."""
    metrics = ["within_div_clip", "cross_div_clip", "cross_div_pixel", "retrieval_acc", "judge_all",
               "judge_distinct_frac"]
    present = [m for m in metrics if m in df and df[m].notna().any()]
    fig = new_figure(11, 3.2 * max(1, math.ceil(len(present) / 2)))
    return _curves(fig, df, present, ncols=2)


@styled
def fig_frontier(df: pd.DataFrame, metrics: Sequence[str] = ("cross_div_clip", "retrieval_acc")):
    """The reward-diversity frontier: seed-mean trajectories (one per condition) in (eval reward, metric).

    Circles mark epoch 0 (the base model), stars the last epoch; dotted lines are the reward levels of
    :func:`matched_reward_table` (drawn when the grid has one reward: levels are per reward).
    """
    metrics = [m for m in metrics if m in df]
    fig = new_figure(5.2 * max(1, len(metrics)) + 2.5, 4.2)
    if not metrics or eval_rows(df).empty:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes)
        return fig
    axes = fig.subplots(1, len(metrics), squeeze=False).ravel()
    styles = _cond_styles(df)
    ev = eval_rows(df)
    levels = reward_levels(df, top="best") if len(reward_names(df)) == 1 else []  # matched-reward table levels
    for ax, metric in zip(axes, metrics):
        mean = ev.groupby(["condition", "epoch"], sort=False)[["reward_mean", metric]].mean().reset_index()
        for cond in conditions(df):
            g = mean[mean["condition"] == cond].sort_values("epoch")
            if g.empty:
                continue
            st = styles[cond]
            ax.plot(g["reward_mean"], g[metric], marker="o", markersize=3, label=cond, **st)
            ax.plot(g["reward_mean"].iloc[-1], g[metric].iloc[-1], marker="*", markersize=11, color=st["color"],
                    linestyle="none")
        base = mean[mean["epoch"] == 0]
        ax.plot(base["reward_mean"], base[metric], marker="o", markersize=7, color="black", linestyle="none",
                label="base model (epoch 0)")
        for lv in levels:
            ax.axvline(lv, color="0.5", linestyle=":", linewidth=1)
        ax.set_xlabel(LABELS["reward_mean"] + " (seed mean)")
        ax.set_ylabel(LABELS.get(metric, metric) + " (seed mean)")
        ax.set_title(f"{LABELS.get(metric, metric)} vs reward")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", title="condition (star = last epoch)")
    return fig


@styled
def fig_final_bars(df: pd.DataFrame, metrics: Sequence[str] = FINAL_METRICS):
    """Final-epoch value of each metric per condition, mean and 95% CI over seeds (dots: single seeds)."""
    from matplotlib.ticker import MaxNLocator

    fin = final_rows(df)
    metrics = [m for m in metrics if m in fin and fin[m].notna().any()]
    conds = conditions(fin)
    ncols = 3
    nrows = max(1, math.ceil(len(metrics) / ncols))
    fig = new_figure(12, 1.2 + nrows * (1.4 + 0.28 * max(len(conds), 1)))
    if not metrics:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no finished cells yet", ha="center", va="center", transform=ax.transAxes)
        return fig
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    styles = _cond_styles(df)
    y = np.arange(len(conds))
    for ax, metric in zip(axes, metrics):
        for i, cond in enumerate(conds):
            vals = fin.loc[fin["condition"] == cond, metric]
            m, lo, hi, _ = mean_ci(vals)
            err = [[m - lo], [hi - m]] if np.isfinite(lo) else None
            ax.barh(i, m, color=styles[cond]["color"], alpha=0.75, xerr=err, capsize=3)
            ax.plot(vals, np.full(len(vals), i), "k.", markersize=3)
        ax.set_yticks(y)
        ax.set_yticklabels(conds if ax in axes[::ncols] else [""] * len(conds))
        ax.invert_yaxis()
        ax.set_title(LABELS.get(metric, metric))
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
        if metric == "retrieval_acc" and "retrieval_chance" in fin:
            ax.axvline(float(fin["retrieval_chance"].mean()), color="0.4", linestyle="--", linewidth=1)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    fig.suptitle("final epoch: mean and 95% CI over seeds (dots: seeds)", fontsize=10)
    return fig


def tile(images: np.ndarray, gap: int = 2, fill: int = 255) -> np.ndarray:
    """(R, C, H, W, 3) uint8 -> one (R*(H+gap)-gap, C*(W+gap)-gap, 3) image with white gaps."""
    r, c, h, w, _ = images.shape
    out = np.full((r * (h + gap) - gap, c * (w + gap) - gap, 3), fill, dtype=np.uint8)
    for i in range(r):
        for j in range(c):
            out[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = images[i, j]
    return out


def wrap_label(text: str, width: int = 28) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or text


def image_axis(ax, grid: np.ndarray, rows: int, cols: int, h: int, w: int, gap: int = 2):
    ax.imshow(grid, interpolation="nearest")
    ax.set_xticks([j * (w + gap) + w / 2 for j in range(cols)])
    ax.set_yticks([i * (h + gap) + h / 2 for i in range(rows)])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)


@styled
def fig_montage(df: pd.DataFrame, eval_seed: int = 0, max_prompts: int | None = None):
    """Eval images at one eval seed, all eval prompts (columns): the base model (epoch 0) and, per condition, the
    final epoch of its first-seed run that kept its images; with several base models, each one's base row comes
    before its first condition. A collapsed condition shows a row of near-identical images."""
    fig = new_figure(6, 2)
    picks = []
    for cond in conditions(df):
        cells = df[df["condition"] == cond].sort_values(["seed", "cell"]).drop_duplicates("cell")
        for _, row in cells.iterrows():
            epochs = committed_eval_epochs(row["cell_dir"])  # what a clone has: the same montage there
            if epochs and epochs[-1] > 0:
                picks.append((cond, row, epochs[-1]))
                break
    if not picks:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no eval images yet", ha="center", va="center", transform=ax.transAxes)
        return fig
    # one base row per base model (study v3 has two toys), its conditions below it in their order
    first_seen = {m: i for i, m in reversed(list(enumerate(str(row.get("model")) for _, row, _ in picks)))}
    picks.sort(key=lambda pick: first_seen[str(pick[1].get("model"))])  # stable: condition order within a model
    models = [row.get("model") for _, row, _ in picks]
    several = len(set(map(str, models))) > 1
    rows_img, labels, shown, prompts = [], [], set(), None
    for (cond, row, epoch), model in zip(picks, models):
        if str(model) not in shown:
            shown.add(str(model))
            base_imgs, base_prompts = cell_eval_images(row["cell_dir"], 0)
            prompts = base_prompts if prompts is None else prompts
            rows_img.append(base_imgs[:, eval_seed])
            labels.append(f"base model {model} (epoch 0)" if several else "base model (epoch 0)")
        imgs, _ = cell_eval_images(row["cell_dir"], epoch)
        rows_img.append(imgs[:, eval_seed])
        labels.append(f"{cond}\n(seed {row['seed']}, epoch {epoch})")
    p = min(len(prompts), max_prompts or len(prompts))
    stack = np.stack([r[:p] for r in rows_img])  # (rows, P, H, W, 3)
    h, w = stack.shape[2:4]
    fig.set_size_inches(max(6.0, 2.6 + 0.62 * p), 1.9 + 0.62 * len(labels))
    ax = fig.add_subplot(1, 1, 1)
    image_axis(ax, tile(stack), len(labels), p, h, w)
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xticklabels([wrap_label(pr, 24) for pr in prompts[:p]], rotation=90, fontsize=5)
    ax.set_title(f"final-epoch eval images at eval seed {EVAL_SEED_BASE + eval_seed}\n"
                 "columns: eval prompts; rows: base model, then each condition (its first seed)", fontsize=9)
    return fig
