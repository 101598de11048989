"""The run folder: its file names, and reading and writing them. One home, so that its format is known in one place.

    <run>/config.json                  the run's DDPOConfig (:func:`prepare_output_dir`, :func:`read_config`)
    <run>/metrics.csv                  one row per epoch, row 0 the base model (:func:`write_metrics`,
                                       :func:`load_metrics`)
    <run>/DONE                         ``{"epochs": N}``, written last: trained to N epochs (:func:`write_done`)
    <run>/status.json                  the grid runner's record of the cell (:func:`read_status`, :func:`write_status`)
    <run>/warnings.txt                 what the run had to go without (LPIPS)
    <run>/eval/epoch_XXXX.npz          eval images (uint8 prompts x seeds), prompts, per-image rewards; ``.png``: a grid
    <run>/eval/epoch_XXXX.rewards.npz  the per-image rewards alone, a few kB (what a grid commits for every cell)
    <run>/eval/epoch_XXXX.link.json    where the images' npz lives when a grid keeps one copy (``<root>/base_eval/``)
    <run>/checkpoints/latest/          the resumable state (:mod:`ddpo_study.checkpoint`)
    <run>/.gitignore                   a grid cell's: what of it is committed (written by the grid runner;
                                       :func:`committed_eval_epochs` reads it)
    <run>/final/{lora,unet}            the trained weights a finished run keeps (:func:`find_weights`)

Reading is strict for a finished run (one with ``DONE``): its files are results, often committed and read from a
clone, so a ``metrics.csv`` cut off, unreadable or without the rows its ``DONE`` promises, eval rewards that are
missing or unreadable, or a base-eval link whose copy is missing or fails its hash raises :class:`DamagedRunError`,
one line naming the file and what is wrong, rather than a shorter curve or a cell gone from every table. A run still
training is read as it is: its newest rows may be redone when it resumes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .atomic import atomic_path, write_text
from .config import DDPOConfig, save_config, unused_keys

if TYPE_CHECKING:
    import torch

CONFIG_FILE = "config.json"
#: The pipeline folder of each denoiser class: where diffusers (and a run's ``final/``) keep its weights.
DENOISER_FOLDERS = {"UNet2DConditionModel": "unet", "SD3Transformer2DModel": "transformer"}
#: A Hugging Face model folder's config (a diffusers UNet such as ``final/unet``, a transformers CLIP, the aesthetic
#: MLP). It has a run config's name, and run folders hold model folders, so it is named here, beside it, once.
MODEL_CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"
DONE_FILE = "DONE"
STATUS_FILE = "status.json"
WARNINGS_FILE = "warnings.txt"
EVAL_DIR = "eval"
CHECKPOINTS_DIR = "checkpoints"
FINAL_DIR = "final"
NETWORK_DIRS = ("unet", "transformer")  #: where final/ and checkpoints keep full weights (SD-type, SD3-type)
SHARED_EVAL_DIR = "base_eval"  # in a grid's output_root: one copy of each distinct base-model eval (by content)


class DamagedRunError(ValueError):
    """A finished run's file that cannot be what the run wrote (cut off, garbage, missing, another hash)."""


def _damaged(path: Path, what: str) -> DamagedRunError:
    return DamagedRunError(f"damaged run folder: {path}: {what}")


def checkpoint_dir(out: str | Path) -> Path:
    """``checkpoints/latest``: the state a resumed run continues from."""
    return Path(out) / CHECKPOINTS_DIR / "latest"


def final_dir(out: str | Path) -> Path:
    """``final/``: the trained weights a finished run keeps after its checkpoints are deleted."""
    return Path(out) / FINAL_DIR


def is_run_folder(folder: str | Path) -> bool:
    """A run's folder: its ``config.json`` and its ``metrics.csv`` or ``DONE`` (a finished run that lost its metrics
    is still a run, a damaged one, and must not vanish from the tables)."""
    folder = Path(folder)
    return (folder / CONFIG_FILE).is_file() and ((folder / METRICS_FILE).is_file() or (folder / DONE_FILE).is_file())


# ----------------------------------------------------------------------------------------------- config
def read_config(out: str | Path) -> dict[str, Any]:
    """The run's ``config.json`` as a dict; a folder without one is not a run (``FileNotFoundError``)."""
    out = Path(out)
    path = out / CONFIG_FILE
    if not path.is_file():
        if has_done(out):
            raise _damaged(path, f"missing, though {DONE_FILE} says the run finished")
        raise FileNotFoundError(f"{out} holds no {CONFIG_FILE}: not a run folder")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        if has_done(out):
            raise _damaged(path, f"not a JSON config ({err})") from None
        raise
    if not isinstance(cfg, dict) and has_done(out):
        raise _damaged(path, f"holds a {type(cfg).__name__}, not a config")
    return cfg


def prepare_output_dir(cfg: DDPOConfig, write: bool = True) -> Path:
    """Check that ``output_dir`` holds no other experiment; with ``write``, create it and save the config there."""
    out = Path(cfg.output_dir)
    cfg_file = out / CONFIG_FILE
    if cfg_file.exists():
        old = json.loads(cfg_file.read_text())
        new = cfg.to_dict()
        # Extending a run (more epochs) is a resume; any other change would mix two experiments in one folder;
        # num_threads/device/log_with change speed or logging, not results, and keys the mode or algorithm never
        # reads change nothing. A key missing from an older config.json counts as its default.
        defaults = DDPOConfig().to_dict()
        ignored = {"num_epochs", "num_threads", "device", "log_with", *unused_keys(cfg.mode, cfg.algorithm)}
        diff = {k for k in set(old) | set(new) if old.get(k, defaults.get(k)) != new.get(k)} - ignored
        if diff:
            raise ValueError(f"{out} holds a run with a different config (keys {sorted(diff)}); "
                             "use a new output_dir or delete the old one")
    if write:
        (out / EVAL_DIR).mkdir(parents=True, exist_ok=True)
        save_config(cfg, cfg_file)
    return out


# ----------------------------------------------------------------------------------------------- DONE
def write_done(out: str | Path, epochs: int, stopped: dict[str, Any] | None = None) -> None:
    """``DONE``, the run's last file: it is trained to ``epochs`` epochs and its ``final/`` weights are written.

    A run the guard stopped (``ddpo_study.guard``) also records ``stopped``: the epochs it was planned for
    (``planned``), the eval that fired (``epoch``, ``rules``, ``values``) and the epoch whose weights ``final/``
    keeps (``kept_epoch``, the last eval that passed).
    """
    write_text(Path(out) / DONE_FILE, json.dumps({"epochs": epochs, **({"stopped": stopped} if stopped else {})})
               + "\n")


def has_done(out: str | Path) -> bool:
    """Whether the run has finished (its ``DONE`` exists); :func:`read_done` says to how many epochs."""
    return (Path(out) / DONE_FILE).is_file()


def _done(out: str | Path) -> dict[str, Any] | None:
    path = Path(out) / DONE_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        int(info["epochs"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise _damaged(path, 'not {"epochs": N}, what a finished run writes') from None
    return info


def read_done(out: str | Path) -> int | None:
    """The epochs the run's ``DONE`` says it was trained to; None while it has none (still training)."""
    info = _done(out)
    return None if info is None else int(info["epochs"])


def read_stop(out: str | Path) -> dict[str, Any] | None:
    """What ``DONE`` says of a guard stop (see :func:`write_done`); None for a run that ran its planned epochs."""
    info = _done(out)
    return None if info is None else info.get("stopped")


def is_finished(out: str | Path, num_epochs: int) -> bool:
    """Whether ``out`` holds a run trained to ``num_epochs`` -- or planned for them and stopped by the guard --
    (``DONE`` and its last metrics row)."""
    out = Path(out)
    info = _done(out)
    if info is None or not (out / METRICS_FILE).is_file():
        return False
    planned = (info.get("stopped") or {}).get("planned", info["epochs"])
    if num_epochs not in (int(info["epochs"]), int(planned)):
        return False
    return bool((_parse_metrics(out / METRICS_FILE)["epoch"] == int(info["epochs"])).any())


# ----------------------------------------------------------------------------------------------- metrics
def write_metrics(out: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite ``metrics.csv`` atomically (a kill never leaves a truncated file)."""
    with atomic_path(Path(out) / METRICS_FILE) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)


def read_metrics(out: Path, upto_epoch: int) -> list[dict[str, Any]]:
    """The rows up to ``upto_epoch`` (a resumed run's checkpoint) as dicts without NaNs; [] if there are none."""
    path = Path(out) / METRICS_FILE
    if not path.is_file():
        return []
    df = pd.read_csv(path)
    df = df[df["epoch"] <= upto_epoch]  # rows written after the last checkpoint are redone
    return [{k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}
            for row in df.to_dict("records")]


def load_metrics(out: str | Path) -> pd.DataFrame:
    """The run's ``metrics.csv`` as a frame. A finished run's is checked against its ``DONE``: complete lines, an
    ``epoch`` column and a row for every epoch 0..N, else :class:`DamagedRunError`; a running one's is read as is."""
    out = Path(out)
    path = out / METRICS_FILE
    done = read_done(out)
    if done is None:
        return pd.read_csv(path)
    if not path.is_file():
        raise _damaged(path, f"missing, though {DONE_FILE} says the run finished {done} epochs")
    df = _parse_metrics(path)
    missing = sorted(set(range(done + 1)) - set(df["epoch"].astype(int)))
    if missing:
        raise _damaged(path, f"no row for epoch {_span(missing)}, though {DONE_FILE} says the run finished {done} "
                             "epochs (cut short?)")
    return df


def _parse_metrics(path: Path) -> pd.DataFrame:
    """A finished run's metrics table: every line whole (as many fields as the header, a line end at the end) and
    an integer ``epoch`` column, else :class:`DamagedRunError`. pandas alone reads a row cut off mid-way as a
    shorter row of NaNs, and garbage as a table of other columns."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise _damaged(path, "not text (garbage?)") from None
    lines = list(csv.reader(io.StringIO(text)))
    if not lines or not lines[0]:
        raise _damaged(path, "empty")
    width = len(lines[0])
    for number, fields in enumerate(lines[1:], 2):
        if len(fields) != width:
            raise _damaged(path, f"line {number} has {len(fields)} of the header's {width} fields (cut off?)")
    if not text.endswith("\n"):
        raise _damaged(path, "its last line has no line end (cut off?)")
    try:
        df = pd.read_csv(io.StringIO(text))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as err:
        raise _damaged(path, f"unreadable as CSV ({str(err).strip().splitlines()[0]})") from None
    if "epoch" not in df:
        raise _damaged(path, f"no epoch column (first line {text.splitlines()[0][:40]!r}): not a metrics table")
    epochs = pd.to_numeric(df["epoch"], errors="coerce")
    odd = df["epoch"][~(epochs.notna() & (epochs % 1 == 0) & (epochs >= 0))]
    if len(odd):
        raise _damaged(path, f"epoch {odd.iloc[0]!r} in line {int(odd.index[0]) + 2} is not an epoch number")
    return df


def _span(epochs: list[int]) -> str:
    """``9`` or ``9-20`` (a contiguous run) or ``9, 12 and 3 more``."""
    if len(epochs) == 1:
        return str(epochs[0])
    if epochs[-1] - epochs[0] == len(epochs) - 1:
        return f"{epochs[0]}-{epochs[-1]}"
    return f"{epochs[0]}, {epochs[1]}" + (f" and {len(epochs) - 2} more" if len(epochs) > 2 else "")


def check_finished(out: str | Path) -> None:
    """Raise :class:`DamagedRunError` if ``out`` is a finished run whose files cannot be what it wrote: its config,
    its metrics (:func:`load_metrics`), every base-eval link (its copy there, with its hash) and the per-image
    rewards of epoch 0 and of its last epoch, which the summary's paired gains read. A run still training passes."""
    out = Path(out)
    done = read_done(out)
    if done is None:
        return
    read_config(out)
    load_metrics(out)
    for link in sorted((out / EVAL_DIR).glob("epoch_*.link.json")):
        _link_target(link)
    for epoch in sorted({0, done}):
        if load_eval_rewards(out, epoch) is None:
            raise _damaged(rewards_file(out, epoch), f"missing (nor are its rewards in {eval_file(out, epoch).name}), "
                                                     f"though {DONE_FILE} says the run finished {done} epochs")


# ----------------------------------------------------------------------------------------------- status
def read_status(cell_dir: str | Path) -> dict[str, Any] | None:
    """The grid runner's ``status.json`` of a cell; None if it has none (or an unreadable one: it is rewritten)."""
    path = Path(cell_dir) / STATUS_FILE
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_status(cell_dir: str | Path, status: dict[str, Any]) -> None:
    """Write a cell's ``status.json`` atomically (a ``grid status`` in another process reads it at any time)."""
    write_text(Path(cell_dir) / STATUS_FILE, json.dumps(status, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------- eval files
def eval_file(out: Path, epoch: int) -> Path:
    """``eval/epoch_XXXX.npz``: the run's own images npz of ``epoch``."""
    return Path(out) / EVAL_DIR / f"epoch_{epoch:04d}.npz"


def eval_png(out: Path, epoch: int) -> Path:
    """``eval/epoch_XXXX.png``: the images as one grid (rows = seeds, columns = prompts)."""
    return eval_file(out, epoch).with_suffix(".png")


def link_file(out: Path, epoch: int) -> Path:
    """``eval/epoch_XXXX.link.json``: where a cell's images npz lives when a grid keeps one shared copy of it."""
    return Path(out) / EVAL_DIR / f"epoch_{epoch:04d}.link.json"


def rewards_file(out: Path, epoch: int) -> Path:
    """``eval/epoch_XXXX.rewards.npz``: the per-image rewards of ``epoch`` alone."""
    return Path(out) / EVAL_DIR / f"epoch_{epoch:04d}.rewards.npz"


def eval_epochs(cell_dir: str | Path) -> list[int]:
    """Epochs with saved eval images (``eval/epoch_XXXX.npz``, or its ``.link.json`` to a grid's shared copy),
    sorted."""
    found = [re.fullmatch(r"epoch_(\d+)(\.npz|\.link\.json)", p.name)
             for p in (Path(cell_dir) / EVAL_DIR).glob("epoch_*")]
    return sorted({int(m.group(1)) for m in found if m})


def committed_eval_epochs(cell_dir: str | Path) -> list[int]:
    """The :func:`eval_epochs` whose images a clone of the results has too. A grid cell's ``.gitignore`` (written
    by ``grid.runner.write_cell_gitignore``) ignores ``eval/epoch_*`` and re-includes the images it commits; a
    figure drawn from images must pick among those, or a clone would draw another figure. A run folder without such a
    file is not a grid's committed result: all its images count."""
    epochs = eval_epochs(cell_dir)
    ignore = Path(cell_dir) / ".gitignore"
    lines = set(ignore.read_text().splitlines()) if ignore.is_file() else set()
    if "eval/epoch_*" not in lines and "*" not in lines:
        return epochs
    return [e for e in epochs if {f"!{EVAL_DIR}/epoch_{e:04d}.npz", f"!{EVAL_DIR}/epoch_{e:04d}.link.json"} & lines]


def reward_epochs(cell_dir: str | Path) -> list[int]:
    """Epochs with saved per-image eval rewards (``eval/epoch_XXXX.rewards.npz`` or the images' npz), sorted."""
    found = [re.fullmatch(r"epoch_(\d+)(\.rewards)?\.npz", p.name)
             for p in (Path(cell_dir) / EVAL_DIR).glob("epoch_*.npz")]
    return sorted({int(m.group(1)) for m in found if m})


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _link_target(link: Path) -> Path:
    """The shared copy a link names, checked against the hash it was written with; else :class:`DamagedRunError`."""
    try:
        meta = json.loads(link.read_text(encoding="utf-8"))
        target, digest = Path(os.path.normpath(link.parent / meta["file"])), meta["sha256"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise _damaged(link, 'not a link ({"file": ..., "sha256": ...})') from None
    if not target.is_file():
        raise _damaged(link, f"the shared eval images it names are missing ({target})")
    if _sha256(target) != digest:
        raise _damaged(link, f"{target} does not hold the images the link was written for (sha256 differs)")
    return target


def resolve_eval_file(out: Path, epoch: int) -> Path | None:
    """The images npz of ``epoch``: the run's own file, else the shared copy its link names (hash-checked);
    None if neither exists. A link whose copy is missing or altered raises :class:`DamagedRunError` naming both
    files, rather than showing other images."""
    own = eval_file(out, epoch)
    if own.is_file():
        return own
    link = link_file(out, epoch)
    return _link_target(link) if link.is_file() else None


def unlinked_shared_evals(store: Path) -> list[Path]:
    """The copies in a grid's ``store`` that no cell's link names (a grid's cells are ``store``'s siblings).

    :func:`share_eval_file` never deletes: a cell re-trained on another base model links to a new copy and leaves
    the old one behind, and deleting it while another process of the grid is between copying and linking would
    break that process's link. So the grid's status lists these copies and a person removes them."""
    store = Path(store)
    named = set()
    for link in store.parent.glob(f"*/{EVAL_DIR}/epoch_*.link.json"):
        try:
            named.add(Path(os.path.normpath(link.parent / json.loads(link.read_text())["file"])))
        except (OSError, ValueError, KeyError):
            continue  # an unreadable link names nothing; resolve_eval_file reports it when the cell is read
    return sorted(p for p in store.glob("*.npz") if Path(os.path.normpath(p)) not in named)


def share_eval_file(out: Path, epoch: int, store: Path) -> Path | None:
    """Copy ``epoch``'s images npz into ``store`` under its content hash and write the run's link to it.

    A grid's cells share one base model and one eval protocol, so their epoch-0 images are byte-identical
    (savez_compressed writes no timestamps): a grid commits one copy and a ~100-byte link per cell instead of a
    ~260 kB file per cell. The run's own file stays where it is (it is what the run and its resume read); the link
    is for a clone, which has only committed files. Returns the link, or None if the run has no such images."""
    own = eval_file(out, epoch)
    if not own.is_file():
        return None
    digest = _sha256(own)
    store = Path(store)
    target = store / f"{digest[:16]}.npz"
    if not (target.is_file() and _sha256(target) == digest):
        store.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            shutil.copyfile(own, tmp)
    link = link_file(out, epoch)
    text = json.dumps({"file": os.path.relpath(target, link.parent), "sha256": digest}, indent=1) + "\n"
    if not link.is_file() or link.read_text() != text:
        write_text(link, text)
    return link


def save_eval_rewards(out: Path, epoch: int, rewards, prompts: list[str]) -> Path:
    """``eval/epoch_XXXX.rewards.npz``: ``rewards`` (float64 prompts x seeds) and ``prompts`` alone, a few kB.

    The images' npz holds the same rewards; this small copy is what a grid commits for every cell (the paired,
    prompt-clustered reward gain needs only it), while the images are committed for a few cells (``keep_eval``).
    """
    import torch

    path = rewards_file(out, epoch)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, rewards=torch.as_tensor(rewards).double().numpy(), prompts=np.array(prompts))
    return path


def _saved_rewards(path: Path, strict: bool) -> tuple[np.ndarray, list[str]] | None:
    """(rewards, prompts) of an eval npz (images' or rewards file); None if absent or rewardless (images saved
    without them). Unreadable: :class:`DamagedRunError` if ``strict`` (a finished run's file), else None."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if "rewards" not in data:
                return None
            return np.asarray(data["rewards"], dtype=np.float64), [str(x) for x in data["prompts"]]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:  # not an npz we wrote
        if strict:
            raise _damaged(path, f"unreadable ({type(err).__name__}: {err})") from None
        return None


def load_eval_rewards(out: Path, epoch: int) -> np.ndarray | None:
    """Per-image rewards (prompts x seeds) of ``epoch``'s eval: from the rewards file, else from the images' npz;
    None if neither holds them."""
    strict = has_done(out)
    for path in (rewards_file(out, epoch), eval_file(out, epoch)):
        saved = _saved_rewards(path, strict)
        if saved is not None:
            return saved[0]
    return None


def ensure_rewards_file(out: Path, epoch: int) -> bool:
    """Write ``epoch``'s rewards file from its images' npz if it is missing (runs saved before the rewards files
    existed); True if the rewards file exists afterwards."""
    if rewards_file(out, epoch).is_file():
        return True
    saved = _saved_rewards(eval_file(out, epoch), has_done(out))
    if saved is None:
        return False
    save_eval_rewards(out, epoch, *saved)
    return True


def save_eval_images(out: Path, epoch: int, images: torch.Tensor, prompts: list[str],
                     rewards: torch.Tensor | None = None) -> None:
    """``eval/epoch_XXXX.npz`` and a PNG grid (rows = seeds), and with ``rewards`` :func:`save_eval_rewards`.

    The npz holds ``images`` (uint8 prompts x seeds x H x W x 3), ``prompts`` and, when given, ``rewards``
    (float64 prompts x seeds: the task reward of each image, for paired before/after comparisons).
    """
    import torch
    from diffusers.utils import make_image_grid
    from PIL import Image

    from .images import to_uint8

    arr = to_uint8(images)
    path = eval_file(out, epoch)
    extra = {} if rewards is None else {"rewards": torch.as_tensor(rewards).double().numpy()}
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, images=arr, prompts=np.array(prompts), **extra)
    if rewards is not None:
        save_eval_rewards(out, epoch, rewards, prompts)
    p, s = arr.shape[:2]
    tiles = [Image.fromarray(arr[j, i]) for i in range(s) for j in range(p)]  # row i = seed i, column = prompt
    grid = make_image_grid(tiles, rows=s, cols=p)
    grid = grid.resize((grid.width * 2, grid.height * 2), Image.NEAREST) if arr.shape[2] <= 64 else grid
    grid.save(eval_png(out, epoch))


def load_eval_arrays(out: Path, epoch: int) -> tuple[np.ndarray, list[str]] | None:
    """(images uint8 (P, S, H, W, 3), prompts) saved at ``epoch``, through the run's link to a grid's shared copy
    if it has one (:func:`resolve_eval_file`); None if absent, :class:`DamagedRunError` if unreadable."""
    path = resolve_eval_file(out, epoch)
    if path is None:
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return data["images"], [str(p) for p in data["prompts"]]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise _damaged(path, f"unreadable eval images ({type(err).__name__}: {err})") from None


def load_eval_images(out: Path, epoch: int) -> torch.Tensor | None:
    """The saved eval images of ``epoch`` as floats (P, S, 3, H, W), exactly as saved; None if absent."""
    from .images import from_uint8

    saved = load_eval_arrays(out, epoch)
    return None if saved is None else from_uint8(saved[0])


# ----------------------------------------------------------------------------------------------- weights
class MissingWeightsError(FileNotFoundError):
    """A run folder whose tuned weights are not there; the message names what was looked for."""


@dataclass
class RunWeights:
    """Where a run's tuned weights are: ``lora`` (a diffusers LoRA folder) and/or ``unet`` (a diffusers UNet
    folder), found in ``source`` (``final`` or ``checkpoint``) at ``epoch``."""

    lora: Path | None
    unet: Path | None
    source: str
    epoch: int


def find_weights(run_dir: str | Path) -> RunWeights:
    """The tuned weights of a run folder: ``final/`` of a finished run, else ``checkpoints/latest/``.

    ``lora`` runs need ``lora/pytorch_lora_weights.safetensors``; ``full`` runs a ``unet/`` folder (``config.json``
    and its weights); ``progressive`` runs both (the full-tuned UNet and the LoRA trained on top of it). Raises
    :class:`MissingWeightsError` naming the missing files; it never returns "no weights".
    """
    from .finetune import LORA_FILE  # here: finetune imports diffusers, which reading results never needs

    run_dir = Path(run_dir)
    mode = read_config(run_dir).get("mode", "lora")
    need = {"lora": ("lora",), "full": ("unet",), "progressive": ("unet", "lora")}.get(mode, ("lora",))

    def network(folder: Path) -> Path:  # unet/ (SD-type) or transformer/ (SD3-type runs)
        return next((folder / n for n in NETWORK_DIRS if (folder / n / MODEL_CONFIG_FILE).is_file()), folder / "unet")

    def missing_in(folder: Path) -> list[str]:
        out = []
        if "lora" in need and not (folder / "lora" / LORA_FILE).is_file():
            out.append(str(folder / "lora" / LORA_FILE))
        if "unet" in need and not (network(folder) / MODEL_CONFIG_FILE).is_file():
            out.append(f"{folder}/{{{','.join(NETWORK_DIRS)}}}/{MODEL_CONFIG_FILE}")
        return out

    done = read_done(run_dir)
    final, ckpt = final_dir(run_dir), checkpoint_dir(run_dir)
    candidates = []
    if done is not None:
        candidates.append((final, "final", done))
    state_file = ckpt / "state.json"
    if state_file.is_file():
        candidates.append((ckpt, "checkpoint", int(json.loads(state_file.read_text())["epoch"])))
    for folder, source, epoch in candidates:
        if not missing_in(folder):
            return RunWeights(lora=folder / "lora" if "lora" in need else None,
                              unet=network(folder) if "unet" in need else None, source=source, epoch=epoch)
    looked = missing_in(final) + (missing_in(ckpt) if state_file.is_file() else [str(state_file)])
    what = {"lora": "its LoRA adapter", "full": "its full UNet", "progressive": "its full UNet and LoRA"}.get(mode)
    if done is not None:
        raise MissingWeightsError(
            f"the finished {mode} run {run_dir} has no tuned weights ({what}): missing {', '.join(looked)}. "
            "Finished runs keep them in final/ (lora/ in diffusers format, unet/ as a diffusers folder); a run "
            "without them can be compared with its base only through its saved eval images")
    raise MissingWeightsError(f"the {mode} run {run_dir} has no checkpoint yet (nothing trained to load): missing "
                              f"{', '.join(looked)}")
