"""Figures and tables of the study, computed from SAVED results only (``config.json``, ``metrics.csv``, eval npz).

Nothing here trains or samples, so every figure can be regenerated from the output folders. All functions are
pure: they take a results frame or a folder and return matplotlib ``Figure`` objects (created without pyplot,
so nothing is shown or kept alive behind the caller's back) or pandas ``DataFrame``\\ s.

* One cell (one run): :func:`cell_figures` (reward / diversity curves, PPO statistics, eval image grids at
  epoch 0 / middle / end whose rows are seeds, so one row shows *different prompts at the same seed*) and
  :func:`cell_table` (the final numbers against the base model).
* A grid: :func:`load_grid_results` (all cells' metric rows with their config columns and a ``condition``
  label built from the config keys that vary, seed excepted), summary figures (:func:`fig_reward_curves`,
  :func:`fig_diversity_curves`, :func:`fig_frontier`, :func:`fig_final_bars`, :func:`fig_montage`) and tables
  (:func:`final_table`, :func:`matched_reward_table`, :func:`questions_table`, :func:`contrasts_table`,
  :func:`learning_table`: each run's paired reward gain over the base model, in standard errors), and
  :func:`write_summary`, which saves them all under ``<root>/summary/`` reproducibly (same inputs, same bytes).

Statistics. Means over seeds with 95% t-intervals (``mean +- t_{0.975, n-1} s / sqrt(n)``; none for n < 2).
Differences between two conditions use Welch's interval, seeds treated as independent runs. "Matched reward"
compares conditions where each run *first reaches* a common eval-reward level (linear interpolation between
eval epochs), the levels lying between the base model's reward and the lowest best reward of the conditions
compared, so that a condition that trains faster or slower is not mistaken for one that collapses more.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import wraps
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from .config import MODES, DDPOConfig

#: Config keys that never define a condition (seed is the replicate; the others are run plumbing).
NON_FACTORS = ("seed", "output_dir", "num_threads", "device")
#: Short names of config keys in condition labels.
SHORT = {"diversity_lambda": "λ", "guidance_scale": "cfg", "lora_rank": "r", "lora_alpha": "α", "kl_beta": "β_KL",
         "per_prompt_stat_tracking": "per-prompt stats", "num_epochs": "epochs", "num_steps": "steps"}
#: Keys whose value alone is a readable label.
VALUE_ONLY = ("mode", "prompt_set", "eval_prompt_set", "reward", "model", "diversity_form", "diversity_feature")

LABELS = {
    "reward_mean": "eval reward",
    "train_reward_mean": "train reward (sampled batch)",
    "within_div_clip": "within-prompt diversity (CLIP)",
    "within_div_pixel": "within-prompt diversity (pixel RMS)",
    "cross_div_clip": "cross-prompt diversity (CLIP)",
    "cross_div_pixel": "cross-prompt diversity (pixel RMS)",
    "retrieval_acc": "prompt retrieval accuracy",
    "clip_score": "CLIP image-prompt similarity",
    "vendi_clip": "Vendi score (CLIP)",
    "dist_base_clip": "distance from base images (CLIP)",
    "dist_base_pixel": "distance from base images (pixel RMS)",
    "param_dist": "weight distance from base (L2)",
    "train_approx_kl": "approx. KL (PPO)",
    "train_clipfrac": "clip fraction (PPO)",
    "train_kl_to_base": "KL to base (sampled transitions)",
    "train_loss": "PPO loss",
    "judge_all": "judge: all 5 attributes right (toy)",
}
FINAL_METRICS = ("reward_mean", "cross_div_clip", "within_div_clip", "retrieval_acc", "judge_all", "dist_base_clip",
                 "param_dist")
MATCH_FRACTIONS = (0.25, 0.5, 0.75)

#: The plotting style, set explicitly so figures do not depend on the user's matplotlibrc.
_BASE_RC = {
    "font.family": "DejaVu Sans",
    "figure.dpi": 100,
    "savefig.dpi": 110,
    "savefig.bbox": None,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 7,
    "legend.title_fontsize": 8,
    "lines.linewidth": 1.5,
    "svg.hashsalt": "ddpo-study",
    "pdf.compression": 6,
    "image.interpolation": "nearest",
}
PNG_METADATA = {"Software": "ddpo_study.report"}
PDF_METADATA = {"CreationDate": None, "ModDate": None, "Producer": "ddpo_study.report", "Creator": "ddpo_study.report"}


@contextmanager
def style():
    """seaborn's ``whitegrid`` style and ``notebook`` context plus fixed fonts/sizes, as an rc context."""
    import matplotlib
    import seaborn as sns

    rc = {**sns.axes_style("whitegrid"), **sns.plotting_context("notebook"), **_BASE_RC}
    with matplotlib.rc_context(rc):
        yield


def _styled(fn):
    @wraps(fn)
    def wrapper(*args, **kwargs):
        with style():
            return fn(*args, **kwargs)
    return wrapper


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


# ================================================================================================ loading
def find_cells(root: str | Path) -> list[Path]:
    """Run folders (``config.json`` + ``metrics.csv``) under ``root`` (``root`` itself may be one), sorted."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p.parent for p in root.rglob("metrics.csv")
             if (p.parent / "config.json").is_file() and "checkpoints" not in p.parent.relative_to(root).parts]
    return sorted(set(found))


def read_cell(cell_dir: str | Path) -> tuple[dict[str, Any], pd.DataFrame]:
    """(config dict, metrics frame) of one run folder."""
    cell_dir = Path(cell_dir)
    cfg = json.loads((cell_dir / "config.json").read_text())
    return cfg, pd.read_csv(cell_dir / "metrics.csv")


def condition_factors(df: pd.DataFrame) -> list[str]:
    """Config keys (in DDPOConfig order) whose value differs between cells, seed and plumbing excepted."""
    import dataclasses

    cells = df.drop_duplicates("cell")
    out = []
    for f in dataclasses.fields(DDPOConfig):
        if f.name in NON_FACTORS or f.name not in cells:
            continue
        if cells[f.name].astype(str).nunique() > 1:
            out.append(f.name)
    return out


def _stem(value: Any) -> str:
    s = str(value)
    return Path(s).stem if ("/" in s or s.endswith(".txt")) else s


def _format_factor(key: str, value: Any) -> str:
    if key in VALUE_ONLY:
        return _stem(value)
    short = SHORT.get(key, key)
    if isinstance(value, (bool, np.bool_)):
        return f"{short} {'on' if value else 'off'}"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return f"{short}={float(value):g}"
    return f"{short}={_stem(value)}"


def _order_key(key: str, value: Any):
    if key == "mode" and value in MODES:
        return (0, MODES.index(value), "")
    if key == "prompt_set":
        return (1, _prompt_count(value), str(value))
    if isinstance(value, (bool, int, float, np.integer, np.floating, np.bool_)):
        return (2, float(value), "")
    return (3, 0.0, str(value))


def load_grid_results(root: str | Path) -> pd.DataFrame:
    """Every cell's ``metrics.csv`` rows under ``root``, with its config columns and labels.

    Added columns: ``cell`` (folder relative to root), ``cell_dir``, ``done`` (``DONE`` exists), ``variant``
    (from the runner's ``status.json``, if any), ``condition`` (label of the varying config keys, seed
    excepted, or the variant's name when variants name the settings one to one), ``condition_order``. ``df.attrs["factors"]``
    lists the varying keys. An empty frame when nothing is there yet.
    """
    root = Path(root)
    frames = []
    for cell_dir in find_cells(root):
        try:
            cfg, metrics = read_cell(cell_dir)
        except (pd.errors.EmptyDataError, json.JSONDecodeError, FileNotFoundError):
            continue  # a run that has not written its first row yet
        metrics = metrics.copy()
        rel = cell_dir.relative_to(root).as_posix() if cell_dir != root else cell_dir.name
        metrics.insert(0, "cell", rel)
        for key, value in cfg.items():
            if key != "output_dir" and key not in metrics:
                metrics[key] = value
        metrics["cell_dir"] = str(cell_dir)
        metrics["done"] = (cell_dir / "DONE").is_file()
        status = _status_of(cell_dir)
        metrics["variant"] = status.get("variant")
        metrics["grid_index"] = status.get("index")
        frames.append(metrics)
    if not frames:
        return pd.DataFrame(columns=["cell", "epoch", "condition"])
    df = pd.concat(frames, ignore_index=True, sort=False)
    factors = condition_factors(df)
    cells = df.drop_duplicates("cell").copy()

    def label(row) -> str:
        if not factors:
            return _format_factor("mode", row.get("mode", "run"))
        return ", ".join(_format_factor(k, row[k]) for k in factors)

    cells["condition"] = [label(r) for _, r in cells.iterrows()]
    cells["_key"] = [tuple(_order_key(k, r[k]) for k in factors) for _, r in cells.iterrows()]
    # A grid of named variants: use the names when each names exactly one setting of the factors.
    named = cells["variant"].notna().all() and cells["variant"].astype(str).ne("").all()
    if named and cells.groupby("variant")["condition"].nunique().max() == 1 and \
            cells.groupby("condition")["variant"].nunique().max() == 1:
        cells["condition"] = cells["variant"].astype(str)
        first_index = cells.groupby("condition")["grid_index"].transform("min").fillna(0)
        cells["_key"] = list(zip(first_index, cells["condition"]))
    order = {c: i for i, c in enumerate(cells.sort_values("_key", kind="stable")["condition"].drop_duplicates())}
    df["condition"] = df["cell"].map(dict(zip(cells["cell"], cells["condition"])))
    df["condition_order"] = df["condition"].map(order)
    df = df.sort_values(["condition_order", "seed", "cell", "epoch"], kind="stable").reset_index(drop=True)
    df.attrs["factors"] = factors
    return df


def _status_of(cell_dir: Path) -> dict[str, Any]:
    """What the grid runner recorded in ``status.json`` (variant name, cell index); {} for other runs."""
    try:
        status = json.loads((cell_dir / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return status if isinstance(status, dict) else {}


def _factors(df: pd.DataFrame) -> list[str]:
    return list(df.attrs.get("factors", condition_factors(df) if "cell" in df else []))


def conditions(df: pd.DataFrame) -> list[str]:
    if df.empty:
        return []
    return list(df.sort_values("condition_order", kind="stable")["condition"].drop_duplicates())


def eval_rows(df: pd.DataFrame, metric: str = "reward_mean") -> pd.DataFrame:
    """Rows with an evaluation (epoch 0 and every eval epoch)."""
    return df[df[metric].notna()] if metric in df else df.iloc[0:0]


def final_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Each finished cell's last evaluation (its ``num_epochs``); unfinished cells are left out."""
    ev = eval_rows(df)
    if ev.empty:
        return ev
    last = ev.loc[ev.groupby("cell")["epoch"].idxmax()]
    if "num_epochs" in last:
        last = last[last["epoch"] == last["num_epochs"]]
    return last.sort_values(["condition_order", "seed", "cell"], kind="stable")


# ================================================================================================ statistics
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


def aggregate(df: pd.DataFrame, by: Sequence[str], metric: str) -> pd.DataFrame:
    """Mean and 95% CI of ``metric`` over the rows of each ``by`` group (seeds, usually)."""
    rows = []
    if metric in df:
        for key, group in df.dropna(subset=[metric]).groupby(list(by), sort=False):
            key = key if isinstance(key, tuple) else (key,)
            m, lo, hi, n = mean_ci(group[metric])
            rows.append({**dict(zip(by, key)), "mean": m, "low": lo, "high": hi, "n": n})
    return pd.DataFrame(rows, columns=[*by, "mean", "low", "high", "n"])


# ================================================================================================ matched reward
def value_at_reward(run: pd.DataFrame, level: float, metric: str, reward: str = "reward_mean") -> tuple[float, float]:
    """(metric, epoch) where one run's eval reward first reaches ``level``, linearly interpolated.

    NaN, NaN if the run never reaches it. ``run``: that run's eval rows.
    """
    r = run.dropna(subset=[reward, metric]).sort_values("epoch")
    rew, val, ep = r[reward].to_numpy(float), r[metric].to_numpy(float), r["epoch"].to_numpy(float)
    for j in range(len(rew)):
        if rew[j] >= level:
            if j == 0:
                return float(val[0]), float(ep[0])
            t = (level - rew[j - 1]) / (rew[j] - rew[j - 1])
            return float(val[j - 1] + t * (val[j] - val[j - 1])), float(ep[j - 1] + t * (ep[j] - ep[j - 1]))
    return math.nan, math.nan


def reward_levels(df: pd.DataFrame, fractions: Sequence[float] = MATCH_FRACTIONS,
                  reward: str = "reward_mean") -> list[float]:
    """Common reward levels of the conditions in ``df``: fractions of the way from the base reward to the lowest
    of the conditions' best (seed-mean) rewards. Empty when some condition never improves on the base."""
    ev = eval_rows(df, reward)
    if ev.empty:
        return []
    base = float(ev[ev["epoch"] == 0][reward].mean())
    curves = ev.groupby(["condition", "epoch"])[reward].mean()
    top = float(curves.groupby(level=0).max().min())
    if not np.isfinite(base) or not np.isfinite(top) or top <= base:
        return []
    return [base + f * (top - base) for f in fractions]


def matched_runs(df: pd.DataFrame, metric: str = "cross_div_clip", levels: Sequence[float] | None = None,
                 fractions: Sequence[float] = MATCH_FRACTIONS) -> pd.DataFrame:
    """Per run and reward level: ``metric`` and the epoch at which the run first reaches that level."""
    levels = list(levels) if levels is not None else reward_levels(df, fractions)
    fractions = list(fractions) if len(fractions) == len(levels) else [math.nan] * len(levels)
    ev = eval_rows(df)
    rows = []
    for cell, run in ev.groupby("cell", sort=False):
        first = run.iloc[0]
        for frac, level in zip(fractions, levels):
            value, epoch = value_at_reward(run, level, metric)
            rows.append({"cell": cell, "condition": first["condition"], "condition_order": first["condition_order"],
                         "seed": first.get("seed"), "fraction": frac, "reward_level": level, metric: value,
                         "epoch_reached": epoch, **{k: first[k] for k in _factors(df)}})
    return pd.DataFrame(rows)


def matched_reward_table(df: pd.DataFrame, metric: str = "cross_div_clip",
                         fractions: Sequence[float] = MATCH_FRACTIONS) -> pd.DataFrame:
    """Each condition's ``metric`` at common reward levels: mean, 95% CI over seeds, runs reaching the level."""
    runs = matched_runs(df, metric, fractions=fractions)
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


def _prompt_count(name: Any) -> float:
    try:
        from .prompts import load_prompts

        return float(len(load_prompts(str(name))))
    except Exception:  # noqa: BLE001 - a missing file: fall back to a number in the name
        digits = re.findall(r"\d+", str(name))
        return float(digits[-1]) if digits else math.inf


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


@_styled
def fig_reward_curves(df: pd.DataFrame):
    """Eval reward and train reward vs epoch, per condition (mean and 95% CI over seeds)."""
    fig = _figure(11, 3.6)
    return _curves(fig, df, ["reward_mean", "train_reward_mean"], ncols=2)


@_styled
def fig_diversity_curves(df: pd.DataFrame):
    """Within- and cross-prompt diversity (CLIP, pixel), prompt-retrieval accuracy and (toy world) the judge's
    prompt-following accuracy vs epoch, per condition."""
    metrics = ["within_div_clip", "cross_div_clip", "cross_div_pixel", "retrieval_acc", "judge_all"]
    present = [m for m in metrics if m in df and df[m].notna().any()]
    fig = _figure(11, 3.2 * max(1, math.ceil(len(present) / 2)))
    return _curves(fig, df, present, ncols=2)


@_styled
def fig_frontier(df: pd.DataFrame, metrics: Sequence[str] = ("cross_div_clip", "retrieval_acc")):
    """The reward-diversity frontier: seed-mean trajectories (one per condition) in (eval reward, metric).

    Circles mark epoch 0 (the base model), stars the last epoch; dotted lines are the common reward levels of
    :func:`matched_reward_table`, where conditions are compared at matched reward rather than matched epoch.
    """
    metrics = [m for m in metrics if m in df]
    fig = _figure(5.2 * max(1, len(metrics)) + 2.5, 4.2)
    if not metrics or eval_rows(df).empty:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes)
        return fig
    axes = fig.subplots(1, len(metrics), squeeze=False).ravel()
    styles = _cond_styles(df)
    ev = eval_rows(df)
    levels = reward_levels(df)
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


@_styled
def fig_final_bars(df: pd.DataFrame, metrics: Sequence[str] = FINAL_METRICS):
    """Final-epoch value of each metric per condition, mean and 95% CI over seeds (dots: single seeds)."""
    from matplotlib.ticker import MaxNLocator

    fin = final_rows(df)
    metrics = [m for m in metrics if m in fin and fin[m].notna().any()]
    conds = conditions(fin)
    ncols = 3
    nrows = max(1, math.ceil(len(metrics) / ncols))
    fig = _figure(12, 1.2 + nrows * (1.4 + 0.28 * max(len(conds), 1)))
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


def eval_epochs(cell_dir: str | Path) -> list[int]:
    """Epochs with saved eval images (``eval/epoch_XXXX.npz``), sorted."""
    found = [re.fullmatch(r"epoch_(\d+)\.npz", p.name) for p in (Path(cell_dir) / "eval").glob("epoch_*.npz")]
    return sorted(int(m.group(1)) for m in found if m)


def load_eval_images(cell_dir: str | Path, epoch: int) -> tuple[np.ndarray, list[str]]:
    """(images uint8 (P, S, H, W, 3), prompts) saved at ``epoch``."""
    with np.load(Path(cell_dir) / "eval" / f"epoch_{epoch:04d}.npz", allow_pickle=False) as data:
        return data["images"], [str(p) for p in data["prompts"]]


def tile(images: np.ndarray, gap: int = 2, fill: int = 255) -> np.ndarray:
    """(R, C, H, W, 3) uint8 -> one (R*(H+gap)-gap, C*(W+gap)-gap, 3) image with white gaps."""
    r, c, h, w, _ = images.shape
    out = np.full((r * (h + gap) - gap, c * (w + gap) - gap, 3), fill, dtype=np.uint8)
    for i in range(r):
        for j in range(c):
            out[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = images[i, j]
    return out


def _wrap(text: str, width: int = 28) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or text


def _image_axis(ax, grid: np.ndarray, rows: int, cols: int, h: int, w: int, gap: int = 2):
    ax.imshow(grid, interpolation="nearest")
    ax.set_xticks([j * (w + gap) + w / 2 for j in range(cols)])
    ax.set_yticks([i * (h + gap) + h / 2 for i in range(rows)])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)


@_styled
def fig_montage(df: pd.DataFrame, eval_seed: int = 0, max_prompts: int | None = None):
    """Eval images at one eval seed, all eval prompts (columns): the base model (epoch 0) and, per condition, the
    final epoch of its first-seed run. A collapsed condition shows a row of near-identical images."""
    fig = _figure(6, 2)
    picks = []
    for cond in conditions(df):
        cells = df[df["condition"] == cond].sort_values(["seed", "cell"]).drop_duplicates("cell")
        for _, row in cells.iterrows():
            epochs = eval_epochs(row["cell_dir"])
            if epochs and epochs[-1] > 0:
                picks.append((cond, row, epochs[-1]))
                break
    if not picks:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no eval images yet", ha="center", va="center", transform=ax.transAxes)
        return fig
    base_imgs, prompts = load_eval_images(picks[0][1]["cell_dir"], 0)
    rows_img, labels = [base_imgs[:, eval_seed]], ["base model (epoch 0)"]
    for cond, row, epoch in picks:
        imgs, _ = load_eval_images(row["cell_dir"], epoch)
        rows_img.append(imgs[:, eval_seed])
        labels.append(f"{cond}\n(seed {row['seed']}, epoch {epoch})")
    p = min(len(prompts), max_prompts or len(prompts))
    stack = np.stack([r[:p] for r in rows_img])  # (rows, P, H, W, 3)
    h, w = stack.shape[2:4]
    fig.set_size_inches(max(6.0, 2.6 + 0.62 * p), 1.9 + 0.62 * len(labels))
    ax = fig.add_subplot(1, 1, 1)
    _image_axis(ax, tile(stack), len(labels), p, h, w)
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xticklabels([_wrap(pr, 24) for pr in prompts[:p]], rotation=90, fontsize=5)
    ax.set_title(f"final-epoch eval images at eval seed {10_000 + eval_seed}\n"
                 "columns: eval prompts; rows: base model, then each condition (its first seed)", fontsize=9)
    return fig


# ================================================================================================ one cell
@_styled
def fig_cell_curves(cell_dir: str | Path):
    """One run: eval and train reward, diversities (CLIP and pixel) and retrieval accuracy vs epoch."""
    cfg, m = read_cell(cell_dir)
    fig = _figure(12, 6)
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


@_styled
def fig_cell_ppo(cell_dir: str | Path):
    """One run: PPO statistics per epoch (approx. KL, clip fraction, KL to base) and the weights' distance."""
    cfg, m = read_cell(cell_dir)
    metrics = [c for c in ("train_approx_kl", "train_clipfrac", "param_dist", "train_kl_to_base")
               if c in m and m[c].notna().any()]
    fig = _figure(3.2 * max(1, len(metrics)), 3.0)
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


@_styled
def fig_cell_images(cell_dir: str | Path, epochs: Sequence[int] | None = None, max_prompts: int = 16):
    """Eval image grids at epoch 0 / middle / end; in each, rows are eval seeds and columns prompts, so one row
    shows different prompts at the same seed (identical images across a row = the collapse)."""
    epochs = list(epochs) if epochs is not None else _pick_epochs(eval_epochs(cell_dir))
    fig = _figure(8, 2)
    if not epochs:
        return fig
    grids = [load_eval_images(cell_dir, e) for e in epochs]
    p, s, h, w = grids[0][0].shape[:4]
    p = min(p, max_prompts)
    fig.set_size_inches(1.5 + 0.5 * p, len(epochs) * (0.55 + 0.5 * s) + 1.6)
    axes = fig.subplots(len(epochs), 1, squeeze=False).ravel()
    for k, (ax, epoch, (imgs, prompts)) in enumerate(zip(axes, epochs, grids)):
        _image_axis(ax, tile(imgs[:p].transpose(1, 0, 2, 3, 4)), s, p, h, w)
        ax.set_yticklabels([f"seed {10_000 + i}" for i in range(s)], fontsize=7)
        if k == len(epochs) - 1:
            ax.set_xticklabels([_wrap(pr, 24) for pr in prompts[:p]], rotation=90, fontsize=5)
        else:
            ax.set_xticklabels([str(j + 1) for j in range(p)], fontsize=6)
        ax.set_title(f"epoch {epoch}" + (" (base model)" if epoch == 0 else ""), fontsize=9)
    return fig


def cell_figures(cell_dir: str | Path) -> dict[str, Any]:
    """All figures of one run: ``curves``, ``ppo``, ``images`` (see the ``fig_cell_*`` functions)."""
    return {"curves": fig_cell_curves(cell_dir), "ppo": fig_cell_ppo(cell_dir), "images": fig_cell_images(cell_dir)}


CELL_TABLE_METRICS = ("reward_mean", "cross_div_clip", "within_div_clip", "cross_div_pixel", "within_div_pixel",
                      "retrieval_acc", "retrieval_chance", "clip_score", "judge_all", "vendi_clip", "dist_base_clip",
                      "dist_base_pixel", "param_dist")


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


# ================================================================================================ writing
def to_markdown(df: pd.DataFrame, floatfmt: str = "{:.4g}") -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""
    def fmt(v) -> str:
        if isinstance(v, (float, np.floating)):
            return "" if not np.isfinite(v) else floatfmt.format(v)
        return str(v).replace("|", "\\|").replace("\n", " ")

    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _write_bytes(path: Path, data: bytes) -> None:
    """Write only if the content changed (keeps mtimes of unchanged files), atomically."""
    if path.is_file() and path.read_bytes() == data:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_figure(fig, stem: str | Path) -> list[Path]:
    """``<stem>.png`` and ``<stem>.pdf`` with fixed metadata: the same figure gives the same bytes."""
    stem = Path(stem)
    out = []
    with style():
        for ext, meta in (("png", PNG_METADATA), ("pdf", PDF_METADATA)):
            buf = io.BytesIO()
            fig.savefig(buf, format=ext, metadata=meta)
            path = stem.with_suffix("." + ext)
            _write_bytes(path, buf.getvalue())
            out.append(path)
    return out


@dataclass
class Summary:
    out_dir: Path
    figures: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def summary_figures(df: pd.DataFrame) -> dict[str, Any]:
    return {"reward_curves": fig_reward_curves(df), "diversity_curves": fig_diversity_curves(df),
            "frontier": fig_frontier(df), "final_bars": fig_final_bars(df), "montage": fig_montage(df)}


def summary_tables(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    contrasts = contrasts_table(df)
    return {"questions": questions_table(df), "final": final_table(df), "matched_reward": matched_reward_table(df),
            "contrasts": contrasts[[c for c in contrasts if not c.startswith("_")]], "learning": learning_table(df),
            "cells": cells_table(df)}


def write_summary(root: str | Path, out_dir: str | Path | None = None) -> Summary:
    """Every summary figure (PNG + PDF) and table (CSV + Markdown) of the grid under ``root``, written to
    ``<root>/summary/`` (or ``out_dir``), plus ``README.md`` (tables inline, figures linked) and
    ``grid_results.csv`` (the tidy data). Re-running on the same results gives byte-identical files."""
    root = Path(root)
    out = Path(out_dir) if out_dir is not None else root / "summary"
    out.mkdir(parents=True, exist_ok=True)
    df = load_grid_results(root)
    summary = Summary(out_dir=out)
    if df.empty:
        return summary
    summary.figures = summary_figures(df)
    summary.tables = summary_tables(df)
    for name, fig in summary.figures.items():
        summary.files += save_figure(fig, out / name)
    md = [f"# Summary of {root.name}\n", f"{df['cell'].nunique()} cells, conditions varying in: "
          f"{', '.join(_factors(df)) or '(none)'}; mean and 95% CI over seeds.\n"]
    for name, table in summary.tables.items():
        csv = out / f"{name}.csv"
        _write_bytes(csv, table.to_csv(index=False).encode())
        _write_bytes(out / f"{name}.md", to_markdown(table).encode())
        summary.files += [csv, out / f"{name}.md"]
        md += [f"## {name}\n", to_markdown(table)]
    md += [f"![{name}]({name}.png)\n" for name in summary.figures]
    tidy = df.drop(columns=["cell_dir"])
    _write_bytes(out / "grid_results.csv", tidy.to_csv(index=False).encode())
    _write_bytes(out / "README.md", "\n".join(md).encode())
    summary.files += [out / "grid_results.csv", out / "README.md"]
    return summary


def notebook_setup() -> None:
    """Keep notebook reports readable: no loading progress bars of diffusers/transformers, no tqdm widget
    warning (the training bar stays, as text), no deprecation chatter from library internals."""
    import warnings

    warnings.filterwarnings("ignore", message="IProgress not found")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"diffusers\..*")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*")
    try:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    except ImportError:
        pass


def config_diff(cfg: Any) -> pd.DataFrame:
    """The config keys of a run (DDPOConfig or dict) that differ from DDPOConfig's defaults, with their docs."""
    import dataclasses

    from .config import field_docs

    values = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    docs = field_docs()
    rows = [{"key": f.name, "value": values[f.name], "default": f.default, "meaning": docs.get(f.name, "")}
            for f in dataclasses.fields(DDPOConfig) if f.name in values and values[f.name] != f.default]
    return pd.DataFrame(rows, columns=["key", "value", "default", "meaning"])
