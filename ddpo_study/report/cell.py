"""One cell (one run): its figures (reward / diversity curves, PPO statistics, eval image grids at epoch 0 /
middle / end whose rows are seeds, so one row shows *different prompts at the same seed*), its final numbers
against the base model, and its config's differences from the defaults."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from ..config import EVAL_SEED_BASE, DDPOConfig
from ..rundir import eval_epochs
from .figures import image_axis, tile, wrap_label
from .plotting import new_figure, styled
from .results import LABELS, _stem, cell_eval_images, read_cell


# ================================================================================================ one cell
@styled
def fig_cell_curves(cell_dir: str | Path):
    """One run: eval and train reward, diversities (CLIP and pixel) and retrieval accuracy vs epoch."""
    cfg, m = read_cell(cell_dir)
    fig = new_figure(12, 6)
    axes = fig.subplots(2, 2).ravel()
    ev = m.dropna(subset=["reward_mean"]) if "reward_mean" in m else m.iloc[0:0]
    panels = [
        ("reward", [("reward_mean", ev), ("train_reward_mean", m)]),
        ("diversity (CLIP cosine distance)", [("within_div_clip", ev), ("cross_div_clip", ev)]),
        ("diversity (pixel RMS, 0-255)", [("within_div_pixel", ev), ("cross_div_pixel", ev)]),
        ("prompt alignment", [("retrieval_acc", ev), ("clip_score", ev), ("judge_all", ev)]),
    ]
    for ax, (title, series) in zip(axes, panels):
        for metric, data in series:
            if metric in data and data[metric].notna().any():
                d = data.dropna(subset=[metric])
                ax.plot(d["epoch"], d[metric], marker="o", markersize=3, label=LABELS.get(metric, metric))
        if title == "prompt alignment" and "retrieval_chance" in m:
            ax.axhline(float(m["retrieval_chance"].dropna().mean()), color="0.4", linestyle="--", linewidth=1,
                       label="retrieval chance")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.suptitle(f"{Path(cell_dir).name}: {cfg.get('mode')} on {_stem(cfg.get('prompt_set'))}, "
                 f"reward {cfg.get('reward')}, λ={cfg.get('diversity_lambda')}, seed {cfg.get('seed')}", fontsize=10)
    return fig


@styled
def fig_cell_ppo(cell_dir: str | Path):
    """One run per epoch: the policy's step (KL per optimizer step, with the controller's target) and the learning
    rate, the weights' distance from base and the KL to base; PPO's approx. KL and clip fraction only when an epoch
    has several optimizer steps (with one step the ratio is 1 and both are identically 0)."""
    cfg, m = read_cell(cell_dir)
    several_steps = "train_optimizer_steps" not in m or (m["train_optimizer_steps"].dropna() > 1).any()
    ppo = ("train_approx_kl", "train_clipfrac") if several_steps else ()
    metrics = [c for c in ("train_step_kl", "learning_rate", *ppo, "param_dist", "train_kl_to_base")
               if c in m and m[c].notna().any()]
    fig = new_figure(3.2 * max(1, len(metrics)), 3.0)
    if not metrics:
        return fig
    axes = fig.subplots(1, len(metrics), squeeze=False).ravel()
    switch = None
    if "phase" in m and cfg.get("mode") == "progressive":
        lora_rows = m[m["phase"] == "lora"]
        switch = float(lora_rows["epoch"].min()) if len(lora_rows) else None
    for ax, metric in zip(axes, metrics):
        d = m.dropna(subset=[metric])
        ax.plot(d["epoch"], d[metric], marker="o", markersize=3)
        if metric in ("train_step_kl", "learning_rate") and (d[metric] > 0).all():
            ax.set_yscale("log")
        if metric == "train_step_kl" and cfg.get("target_kl"):
            ax.axhline(cfg["target_kl"], color="C3", linestyle=":", linewidth=1, label="target_kl")
            ax.legend()
        if switch is not None:
            ax.axvline(switch, color="0.4", linestyle="--", linewidth=1, label="switch to LoRA")
            ax.legend()
        ax.set_title(LABELS.get(metric, metric))
        ax.set_xlabel("epoch")
    return fig


def _pick_epochs(epochs: list[int]) -> list[int]:
    if not epochs:
        return []
    first, last = epochs[0], epochs[-1]
    middle = min(epochs, key=lambda e: (abs(e - (first + last) / 2), e))
    return sorted(set([first, middle, last]))


@styled
def fig_cell_images(cell_dir: str | Path, epochs: Sequence[int] | None = None, max_prompts: int = 16):
    """Eval image grids at epoch 0 / middle / end; in each, rows are eval seeds and columns prompts, so one row
    shows different prompts at the same seed (identical images across a row = the collapse)."""
    epochs = list(epochs) if epochs is not None else _pick_epochs(eval_epochs(cell_dir))
    fig = new_figure(8, 2)
    if not epochs:
        return fig
    grids = [cell_eval_images(cell_dir, e) for e in epochs]
    p, s, h, w = grids[0][0].shape[:4]
    p = min(p, max_prompts)
    fig.set_size_inches(1.5 + 0.5 * p, len(epochs) * (0.55 + 0.5 * s) + 1.6)
    # Small images need no more than 80 dpi (40 px per half-inch tile, labels still legible): the embedded PNG,
    # most of a cell's report.html, is then ~40% smaller than at the default 100 dpi.
    fig.set_dpi(80 if w <= 64 else 100)
    axes = fig.subplots(len(epochs), 1, squeeze=False).ravel()
    for k, (ax, epoch, (imgs, prompts)) in enumerate(zip(axes, epochs, grids)):
        image_axis(ax, tile(imgs[:p].transpose(1, 0, 2, 3, 4)), s, p, h, w)
        ax.set_yticklabels([f"seed {EVAL_SEED_BASE + i}" for i in range(s)], fontsize=7)
        if k == len(epochs) - 1:
            ax.set_xticklabels([wrap_label(pr, 24) for pr in prompts[:p]], rotation=90, fontsize=6)
        else:
            ax.set_xticklabels([str(j + 1) for j in range(p)], fontsize=6)
        ax.set_title(f"epoch {epoch}" + (" (base model)" if epoch == 0 else ""), fontsize=9)
    return fig


def as_jpeg(fig, quality: int = 88):
    """A figure as an embeddable JPEG (``IPython.display.Image``). The eval-image figure is mostly photo-like
    tiles, which PNG stores at ~400 KB per report; JPEG keeps it near 100 KB, so 36 reports fit in the repo."""
    import io

    from IPython.display import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="jpeg", dpi=fig.dpi, bbox_inches="tight", facecolor="white",
                pil_kwargs={"quality": quality, "optimize": True})
    return Image(data=buf.getvalue(), format="jpeg")


def cell_figures(cell_dir: str | Path) -> dict[str, Any]:
    """All figures of one run: ``curves``, ``ppo``, ``images`` (see the ``fig_cell_*`` functions)."""
    return {"curves": fig_cell_curves(cell_dir), "ppo": fig_cell_ppo(cell_dir), "images": fig_cell_images(cell_dir)}


CELL_TABLE_METRICS = ("reward_mean", "cross_div_clip", "within_div_clip", "cross_div_pixel", "within_div_pixel",
                      "retrieval_acc", "retrieval_chance", "clip_score", "judge_all", "judge_distinct",
                      "judge_distinct_frac", "vendi_clip", "dist_base_clip", "dist_base_pixel", "param_dist")


def cell_table(cell_dir: str | Path) -> pd.DataFrame:
    """One run's numbers: base model (epoch 0), last eval epoch, and the change, one row per metric."""
    _, m = read_cell(cell_dir)
    ev = m.dropna(subset=["reward_mean"]) if "reward_mean" in m else m
    first, last = ev.iloc[0], ev.iloc[-1]
    rows = []
    for metric in CELL_TABLE_METRICS:
        if metric not in ev:
            continue
        a, b = float(first.get(metric, math.nan)), float(last.get(metric, math.nan))
        rows.append({"metric": metric, "meaning": LABELS.get(metric, ""), "base (epoch 0)": a,
                     f"epoch {int(last['epoch'])}": b, "change": b - a})
    time_cols = [c for c in m if c.startswith("time_")]
    if time_cols:
        total = float(m[time_cols].sum().sum())
        rows.append({"metric": "wall_time_s", "meaning": "seconds of sampling, reward, training and eval",
                     "base (epoch 0)": math.nan, f"epoch {int(last['epoch'])}": total, "change": math.nan})
    return pd.DataFrame(rows)


def config_diff(cfg: Any) -> pd.DataFrame:
    """The config keys of a run (DDPOConfig or dict) that differ from DDPOConfig's defaults, with their docs."""
    import dataclasses

    from ..config import field_docs

    values = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    docs = field_docs()
    # the defaults as resolved for this run: derived fields (the stat tracker's window follows images_per_prompt)
    # count as default when they are what the derivation gives
    defaults = DDPOConfig(images_per_prompt=values.get("images_per_prompt", DDPOConfig.images_per_prompt)).to_dict()
    rows = [{"key": f.name, "value": values[f.name], "default": defaults[f.name], "meaning": docs.get(f.name, "")}
            for f in dataclasses.fields(DDPOConfig) if f.name in values and values[f.name] != defaults[f.name]]
    return pd.DataFrame(rows, columns=["key", "value", "default", "meaning"])
