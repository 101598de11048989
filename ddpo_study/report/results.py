"""Reading saved results: run folders, the grid's tidy frame, condition labels and their order, eval rows and
the saved eval images.

:func:`load_grid_results` gives all cells' metric rows with their config columns and a ``condition`` label built
from the config keys that vary, seed excepted (or the variant's name when variants name the settings one to one).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..config import MODES, DDPOConfig, unused_keys
from ..rundir import (
    CHECKPOINTS_DIR,
    DONE_FILE,
    METRICS_FILE,
    DamagedRunError,
    check_finished,
    eval_file,
    has_done,
    is_run_folder,
    load_eval_arrays,
    load_metrics,
    read_config,
    read_status,
    read_stop,
)

#: Config keys that never define a condition (seed is the replicate; the others are run plumbing).
NON_FACTORS = ("seed", "output_dir", "num_threads", "device", "log_with")
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
    "train_step_kl": "policy KL per optimizer step",
    "learning_rate": "learning rate (after step control)",
    "train_kl_to_base": "KL to base (sampled transitions)",
    "train_loss": "PPO loss",
    "judge_all": "judge: all 5 attributes right (toy)",
    "judge_distinct": "judge: distinct readings across prompts, one seed (toy)",
    "judge_distinct_frac": "judge: distinct readings / distinct prompts (toy)",
}
FINAL_METRICS = ("reward_mean", "cross_div_clip", "within_div_clip", "retrieval_acc", "judge_all", "judge_distinct",
                 "dist_base_clip", "param_dist")


# ================================================================================================ loading
def find_cells(root: str | Path) -> list[Path]:
    """Run folders under ``root`` (``root`` itself may be one; :func:`~ddpo_study.rundir.is_run_folder`), sorted."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p.parent for name in (METRICS_FILE, DONE_FILE) for p in root.rglob(name)
             if is_run_folder(p.parent) and CHECKPOINTS_DIR not in p.parent.relative_to(root).parts]
    return sorted(set(found))


def read_cell(cell_dir: str | Path) -> tuple[dict[str, Any], pd.DataFrame]:
    """(config dict, metrics frame) of one run folder; a finished run's are read strictly
    (:func:`~ddpo_study.rundir.load_metrics`)."""
    cell_dir = Path(cell_dir)
    return read_config(cell_dir), load_metrics(cell_dir)


def condition_factors(df: pd.DataFrame) -> list[str]:
    """Config keys (in DDPOConfig order) whose value differs between cells, seed and plumbing excepted.

    Keys the cell's mode or algorithm never reads (:func:`~ddpo_study.config.unused_keys`, e.g. the
    full-fine-tuning learning rate of a LoRA run, or NFT's keys in a DDPO run) are ignored, so changing the full
    learning rate of a grid does not split its LoRA cells off."""
    import dataclasses

    cells = df.drop_duplicates("cell")
    modes = cells["mode"] if "mode" in cells else pd.Series([""] * len(cells), index=cells.index)
    algorithms = cells["algorithm"] if "algorithm" in cells else pd.Series([None] * len(cells), index=cells.index)
    unread = [unused_keys(m, a) for m, a in zip(modes, algorithms)]
    out = []
    for f in dataclasses.fields(DDPOConfig):
        if f.name in NON_FACTORS or f.name not in cells:
            continue
        values = cells[f.name].astype(str)
        values = values[[f.name not in u for u in unread]]
        if values.nunique() > 1:
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


def _prompt_count(name: Any) -> float:
    try:
        from ..prompts import load_prompts

        return float(len(load_prompts(str(name))))
    except Exception:  # noqa: BLE001 - a missing file: fall back to a number in the name
        digits = re.findall(r"\d+", str(name))
        return float(digits[-1]) if digits else math.inf


def load_grid_results(root: str | Path, finished_only: bool = False, allow_damaged: bool = False) -> pd.DataFrame:
    """Every cell's ``metrics.csv`` rows under ``root``, with its config columns and labels; ``finished_only``:
    only cells with ``DONE`` (what a clone of the committed results has), so a summary does not depend on which
    cells happen to be running.

    A finished cell is checked first (:func:`~ddpo_study.rundir.check_finished`): a damaged one raises
    :class:`~ddpo_study.rundir.DamagedRunError`, or with ``allow_damaged`` is left out of the rows and listed in
    ``df.attrs["damaged"]`` (cell -> the error's line) for :func:`~.tables.cells_table`; never dropped unsaid.

    Added columns: ``cell`` (folder relative to root), ``cell_dir``, ``done`` (``DONE`` exists), ``variant``
    (from the runner's ``status.json``, if any), ``condition`` (label of the varying config keys, seed
    excepted; or the variant's name when variants name the settings one to one; or, for variants crossed with axes,
    the variant's name and the axes that vary within it, as "nft-unet, lora"), ``condition_order``. ``df.attrs["factors"]``
    lists the varying keys. An empty frame when nothing is there yet.
    """
    root = Path(root)
    frames, damaged = [], {}
    for cell_dir in find_cells(root):
        finished = has_done(cell_dir)
        if finished_only and not finished:
            continue
        rel = cell_dir.relative_to(root).as_posix() if cell_dir != root else cell_dir.name
        if finished:
            try:
                check_finished(cell_dir)
            except DamagedRunError as err:
                if not allow_damaged:
                    raise
                damaged[rel] = str(err)
                continue
        try:
            cfg, metrics = read_cell(cell_dir)
        except (pd.errors.EmptyDataError, json.JSONDecodeError, FileNotFoundError):
            continue  # a run that has not written its first row yet
        metrics = metrics.copy()
        metrics.insert(0, "cell", rel)
        for key, value in cfg.items():
            if key != "output_dir" and key not in metrics:
                metrics[key] = value
        metrics["cell_dir"] = str(cell_dir)
        metrics["done"] = finished
        if finished and (stop := read_stop(cell_dir)):  # the guard stopped it (columns only then: bytes kept)
            metrics["stopped_at"], metrics["kept_epoch"] = stop["epoch"], stop["kept_epoch"]
        status = _status_of(cell_dir)
        metrics["variant"] = status.get("variant")
        metrics["grid_index"] = status.get("index")
        frames.append(metrics)
    if not frames:
        empty = pd.DataFrame(columns=["cell", "epoch", "condition"])
        empty.attrs["damaged"] = damaged
        return empty
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
    elif named and cells.groupby("condition")["variant"].nunique().max() == 1:
        # variants crossed with axes (study v3: method x mode): the variant's name and the axes that vary within
        # it, e.g. "nft-unet, lora"
        within = [k for k in factors if cells.groupby("variant")[k].nunique(dropna=False).max() > 1]
        cells["condition"] = [", ".join([str(r["variant"]), *(_format_factor(k, r[k]) for k in within)])
                              for _, r in cells.iterrows()]
        first_index = cells.groupby("variant")["grid_index"].transform("min").fillna(0)
        cells["_key"] = [(i, *(_order_key(k, r[k]) for k in within)) for i, (_, r) in zip(first_index, cells.iterrows())]
    order = {c: i for i, c in enumerate(cells.sort_values("_key", kind="stable")["condition"].drop_duplicates())}
    df["condition"] = df["cell"].map(dict(zip(cells["cell"], cells["condition"])))
    df["condition_order"] = df["condition"].map(order)
    df = df.sort_values(["condition_order", "seed", "cell", "epoch"], kind="stable").reset_index(drop=True)
    df.attrs["factors"] = factors
    df.attrs["damaged"] = damaged
    return df


def _status_of(cell_dir: Path) -> dict[str, Any]:
    """What the grid runner recorded in ``status.json`` (variant name, cell index); {} for other runs."""
    status = read_status(cell_dir)
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


def cell_eval_images(cell_dir: str | Path, epoch: int) -> tuple[np.ndarray, list[str]]:
    """(images uint8 (P, S, H, W, 3), prompts) saved at ``epoch`` (:func:`ddpo_study.rundir.load_eval_arrays`);
    a missing file is an error here, since the report asked for an epoch the cell lists."""
    saved = load_eval_arrays(Path(cell_dir), epoch)
    if saved is None:
        raise FileNotFoundError(f"{eval_file(Path(cell_dir), epoch)}: no saved eval images (nor a link to them)")
    return saved
