"""The eval protocol: fixed held-out prompts x fixed seeds -> images, metrics, and the saved ``eval/`` files.

Every run evaluates the same ``eval_num_prompts`` prompts at seeds ``EVAL_SEED_BASE + j``, so two runs (or two
epochs of one run) compare image by image. The task reward is scored without any diversity penalty: a penalised
eval reward would depend on how eval images are batched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_path, write_text
from .config import EVAL_SEED_BASE, DDPOConfig
from .images import from_uint8, to_uint8


def eval_seeds(num_seeds: int) -> list[int]:
    """The fixed eval seeds ``EVAL_SEED_BASE .. EVAL_SEED_BASE + num_seeds - 1``."""
    return [EVAL_SEED_BASE + j for j in range(num_seeds)]


def evaluate(cfg: DDPOConfig, family, pipe, denoiser, eval_prompts, reward_fn, clip, lpips_model, base_images=None,
             base_embeds=None):
    """Returns (images (P, S, 3, H, W) in [0, 1], metrics, rewards (P, S)).

    The images come from the sampler family's eval sampler (``SamplerFamily.generate``: per-image seeds, as the
    stock pipeline samples). ``base_images`` / ``base_embeds`` (the epoch-0 images or their CLIP embeddings)
    enable the distance-from-base metrics.
    """
    from .metrics import compute_eval_metrics, image_rewards

    seeds = eval_seeds(cfg.eval_num_seeds)
    pairs = [(p, s) for p in eval_prompts for s in seeds]
    generated = family.generate(pipe, denoiser, [p for p, _ in pairs], [s for _, s in pairs], cfg)
    images = generated.float().cpu().reshape(len(eval_prompts), len(seeds), *generated.shape[1:])
    rewards = image_rewards(images, eval_prompts, reward_fn)
    metrics = compute_eval_metrics(images, eval_prompts, clip, base_images=base_images, rewards=rewards,
                                   lpips=lpips_model, base_embeds=base_embeds)
    metrics.update(judge_metrics(images, eval_prompts))
    return images, metrics, rewards


def judge_metrics(images: torch.Tensor, prompts: list[str]) -> dict[str, float]:
    """Toy world only: the geometric judge's attribute accuracy (``judge_<attr>``) and its number of distinct
    readings across prompts at one seed (``judge_distinct``, ``judge_distinct_frac``), a CLIP-free referee.

    Empty for prompts outside the toy grammar (Stable Diffusion runs).
    """
    from .toy import world
    from .toy.judge import attribute_accuracy, distinct_readings

    try:
        attrs = world.parse_many(prompts)
    except world.PromptError:
        return {}
    accuracy = attribute_accuracy(images.flatten(0, 1), attrs.repeat_interleave(images.shape[1]))
    distinct = distinct_readings(images, attrs)  # how many different prompts' images still read differently
    return {f"judge_{k}": v for k, v in {**accuracy, **distinct}.items()}


def eval_file(out: Path, epoch: int) -> Path:
    return Path(out) / "eval" / f"epoch_{epoch:04d}.npz"


def link_file(out: Path, epoch: int) -> Path:
    """``eval/epoch_XXXX.link.json``: where a cell's images npz lives when a grid keeps one shared copy of it."""
    return Path(out) / "eval" / f"epoch_{epoch:04d}.link.json"


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def resolve_eval_file(out: Path, epoch: int) -> Path | None:
    """The images npz of ``epoch``: the run's own file, else the shared copy its link names (hash-checked);
    None if neither exists. A link whose target is missing or altered raises ``FileNotFoundError``/``ValueError``
    naming both files, rather than showing other images."""
    own = eval_file(out, epoch)
    if own.is_file():
        return own
    link = link_file(out, epoch)
    if not link.is_file():
        return None
    meta = json.loads(link.read_text())
    target = Path(os.path.normpath(link.parent / meta["file"]))
    if not target.is_file():
        raise FileNotFoundError(f"{link}: the shared eval images it names are missing ({target})")
    if _sha256(target) != meta["sha256"]:
        raise ValueError(f"{link}: {target} does not hold the images the link was written for (sha256 differs)")
    return target


def unlinked_shared_evals(store: Path) -> list[Path]:
    """The copies in a grid's ``store`` that no cell's link names (a grid's cells are ``store``'s siblings).

    :func:`share_eval_file` never deletes: a cell re-trained on another base model links to a new copy and leaves
    the old one behind, and deleting it while another process of the grid is between copying and linking would
    break that process's link. So the grid's status lists these copies and a person removes them."""
    store = Path(store)
    named = set()
    for link in store.parent.glob("*/eval/epoch_*.link.json"):
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


def rewards_file(out: Path, epoch: int) -> Path:
    return Path(out) / "eval" / f"epoch_{epoch:04d}.rewards.npz"


def save_eval_rewards(out: Path, epoch: int, rewards, prompts: list[str]) -> Path:
    """``eval/epoch_XXXX.rewards.npz``: ``rewards`` (float64 prompts x seeds) and ``prompts`` alone, a few kB.

    The images' npz holds the same rewards; this small copy is what a grid commits for every cell (the paired,
    prompt-clustered reward gain needs only it), while the images are committed for a few cells (``keep_eval``).
    """
    path = rewards_file(out, epoch)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, rewards=torch.as_tensor(rewards).double().numpy(), prompts=np.array(prompts))
    return path


def _saved_rewards(path: Path) -> tuple[np.ndarray, list[str]] | None:
    """(rewards, prompts) of an eval npz (images' or rewards file); None if absent, unreadable or rewardless."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if "rewards" not in data:
                return None
            return np.asarray(data["rewards"], dtype=np.float64), [str(x) for x in data["prompts"]]
    except (OSError, ValueError, zipfile.BadZipFile):  # not an npz we wrote
        return None


def load_eval_rewards(out: Path, epoch: int) -> np.ndarray | None:
    """Per-image rewards (prompts x seeds) of ``epoch``'s eval: from the rewards file, else from the images' npz;
    None if neither holds them."""
    for path in (rewards_file(out, epoch), eval_file(out, epoch)):
        saved = _saved_rewards(path)
        if saved is not None:
            return saved[0]
    return None


def ensure_rewards_file(out: Path, epoch: int) -> bool:
    """Write ``epoch``'s rewards file from its images' npz if it is missing (runs saved before the rewards files
    existed); True if the rewards file exists afterwards."""
    if rewards_file(out, epoch).is_file():
        return True
    saved = _saved_rewards(eval_file(out, epoch))
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
    from diffusers.utils import make_image_grid
    from PIL import Image

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
    grid.save(path.with_suffix(".png"))


def load_eval_arrays(out: Path, epoch: int) -> tuple[np.ndarray, list[str]] | None:
    """(images uint8 (P, S, H, W, 3), prompts) saved at ``epoch``, through the run's link to a grid's shared copy
    if it has one (:func:`resolve_eval_file`); None if absent."""
    path = resolve_eval_file(out, epoch)
    if path is None:
        return None
    with np.load(path, allow_pickle=False) as data:
        return data["images"], [str(p) for p in data["prompts"]]


def load_eval_images(out: Path, epoch: int) -> torch.Tensor | None:
    """The saved eval images of ``epoch`` as floats (P, S, 3, H, W), exactly as saved; None if absent."""
    saved = load_eval_arrays(out, epoch)
    return None if saved is None else from_uint8(saved[0])
