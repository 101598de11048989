"""The DDPO training loop (Black et al. 2023, Algorithm 1 with PPO), one run = one grid cell.

    for epoch in 1..N:
        1. sample  : trajectories x_T..x_0 of the current policy, with per-step log-probs
        2. reward  : r(x_0, prompt), optionally minus a diversity penalty
        3. advantage: rewards normalised per prompt (or per batch)
        4. PPO     : inner epochs over random minibatches and random timestep subsets, clipped surrogate
                     (+ optional KL to the base model on the same transitions)
        5. evaluate: fixed eval prompts x fixed seeds -> images, reward, diversity, retrieval (every k epochs)
        6. log + checkpoint (atomic); a re-run resumes from the last checkpoint

Every random draw of epoch ``e`` (prompts, sampling seeds, minibatch order, timestep subsets) is derived
from ``(seed, e)``, so a resumed run continues exactly as an uninterrupted one would. ``metrics.csv`` has
one row per epoch: row 0 is the base model, row ``e`` the state after ``e`` updates (its ``train_*``
columns describe the samples drawn at the start of epoch ``e``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import finetune
from .checkpoint import load_checkpoint_state, load_unet_tensors, optimizer_from_tensors, save_checkpoint
from .config import UNUSED_BY_MODE, DDPOConfig, save_config
from .ppo import clipped_surrogate_loss, select_timesteps
from .prompts import load_prompts
from .sampler import recompute_log_probs, sample_trajectories
from .stat_tracking import PerPromptStatTracker, global_advantages

EVAL_SEED_BASE = 10_000
METRICS_FILE = "metrics.csv"


# ----------------------------------------------------------------------------------------------- setup
def _device(cfg: DDPOConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def _frozen_dtype(cfg: DDPOConfig, device: torch.device) -> torch.dtype:
    if device.type == "cpu" or cfg.mixed_precision == "no":
        return torch.float32
    return {"fp16": torch.float16, "bf16": torch.bfloat16}[cfg.mixed_precision]


def _epoch_rng(cfg: DDPOConfig, epoch: int, stream: int) -> np.random.Generator:
    """Independent, reproducible randomness for (run seed, epoch, purpose)."""
    return np.random.default_rng([cfg.seed, epoch, stream])


def _prepare_output_dir(cfg: DDPOConfig) -> Path:
    out = Path(cfg.output_dir)
    (out / "eval").mkdir(parents=True, exist_ok=True)
    cfg_file = out / "config.json"
    if cfg_file.exists():
        old = json.loads(cfg_file.read_text())
        new = cfg.to_dict()
        # Extending a run (more epochs) is a resume; any other change would mix two experiments in one folder;
        # num_threads/device change speed, not results, and keys the mode never reads change nothing.
        ignored = {"num_epochs", "num_threads", "device", *UNUSED_BY_MODE.get(cfg.mode, ())}
        diff = {k for k in set(old) | set(new) if old.get(k) != new.get(k)} - ignored
        if diff:
            raise ValueError(f"{out} holds a run with a different config (keys {sorted(diff)}); "
                             "use a new output_dir or delete the old one")
    save_config(cfg, cfg_file)
    return out


def load_scorers(cfg: DDPOConfig, device: torch.device):
    """The CLIP scorer, aesthetic MLP and (if available) LPIPS used by rewards and metrics."""
    from .models import load_aesthetic, load_clip, resolve_model
    from .metrics import maybe_load_lpips

    model_dir = Path(resolve_model(cfg.model))
    clip_path = cfg.clip_model or (str(model_dir / "clip") if (model_dir / "clip").is_dir()
                                   else "openai/clip-vit-large-patch14")
    clip = load_clip(clip_path, device)
    aesthetic_path = cfg.aesthetic_model or (str(model_dir / "aesthetic") if (model_dir / "aesthetic").is_dir() else "")
    aesthetic = load_aesthetic(aesthetic_path, device) if aesthetic_path else None
    lpips_model, lpips_warning = maybe_load_lpips(device)
    return clip, aesthetic, lpips_model, lpips_warning


# ----------------------------------------------------------------------------------------------- steps
def epoch_prompts(cfg, prompts_all, epoch) -> list[tuple[str, int]]:
    """The epoch's (prompt, seed) pairs, from ``(run seed, epoch)`` alone.

    ``images_per_prompt = 1`` is DDPO's draw: ``samples_per_epoch`` prompts uniformly with replacement.
    Otherwise ``samples_per_epoch / images_per_prompt`` groups are drawn, each one prompt sampled
    ``images_per_prompt`` times with distinct seeds; the groups' prompts go through shuffled copies of the
    prompt set (no prompt twice before every prompt once), so each group is its own same-epoch baseline for
    per-prompt advantages. Why groups: with DDPO's draws, 64 samples give each of 30 prompts about 2
    samples an epoch and each of 300 prompts almost none, so the tracker falls back to batch statistics,
    whose spread is mostly *between* prompts (on the toy model 90% of the aesthetic reward's variance): the
    advantage then mostly says which prompt was drawn, which no update can change, and the 30- and
    300-prompt arms of the study would get different estimators.
    """
    rng = _epoch_rng(cfg, epoch, 0)
    k, n = cfg.images_per_prompt, len(prompts_all)
    if k == 1:
        chosen = rng.integers(0, n, cfg.samples_per_epoch)
    else:
        n_groups = cfg.samples_per_epoch // k
        if n_groups <= n:
            groups = rng.choice(n, n_groups, replace=False)
        else:
            groups = np.concatenate([rng.permutation(n) for _ in range(-(-n_groups // n))])[:n_groups]
        chosen = np.repeat(groups, k)
    prompts = [prompts_all[i] for i in chosen]
    seeds = rng.integers(0, 2**31 - 1, cfg.samples_per_epoch).tolist()
    return list(zip(prompts, seeds))


def sample_epoch(cfg, pipe, unet, prompts_all, epoch, shard=(0, 1), progress=False):
    """Step 1: this process's share of the epoch's (prompt, seed) pairs, sampled as trajectories."""
    pairs = epoch_prompts(cfg, prompts_all, epoch)[shard[0]::shard[1]]
    return sample_trajectories(pipe, [p for p, _ in pairs], [s for _, s in pairs], num_inference_steps=cfg.num_steps,
                               guidance_scale=cfg.guidance_scale, eta=cfg.eta, unet=unet,
                               batch_size=cfg.sample_batch_size, progress=progress)


def compute_advantages(cfg, tracker, prompts, rewards: np.ndarray) -> np.ndarray:
    """Step 3: per-prompt normalisation (DDPO) or whole-batch normalisation."""
    if cfg.per_prompt_stat_tracking:
        return tracker.update(prompts, rewards)
    return global_advantages(rewards)


def ppo_update(cfg, pipe, unet, params, optimizer, traj, advantages, epoch, reference=None, sync=None,
               autocast=contextlib.nullcontext) -> dict[str, float]:
    """Step 4: inner epochs of clipped-surrogate PPO over random minibatches and timestep subsets.

    Each minibatch's (sample, timestep) pairs are scored in one batched UNet call, or in chunks of
    ``train_timesteps_per_pass`` timesteps whose losses are weighted by their share so the gradient is the
    same (memory, not math). ``sync`` (multi-process runs) averages each gradient across processes before the
    optimizer step; ``autocast`` is the mixed-precision context for the forward passes.
    """
    n = len(traj)
    adv = torch.as_tensor(advantages, dtype=torch.float32, device=traj.latents.device)
    stats: dict[str, list[float]] = {"loss": [], "approx_kl": [], "clipfrac": [], "kl_to_base": [], "grad_norm": []}
    unet.train()
    accum = 0
    for inner in range(cfg.inner_epochs):
        g = torch.Generator().manual_seed(int(_epoch_rng(cfg, epoch, 1 + inner).integers(2**62)))  # same on all processes
        order = torch.randperm(n, generator=g)
        steps = select_timesteps(cfg.num_steps, cfg.timestep_fraction, n, generator=g)  # (n, K)
        k_total = steps.shape[1]
        chunk = cfg.train_timesteps_per_pass or k_total
        for start in range(0, n, cfg.train_batch_size):
            idx = order[start:start + cfg.train_batch_size]
            mb = traj[idx]
            mb_adv = adv[idx.to(adv.device)]
            for c0 in range(0, k_total, chunk):
                step_idx = steps[idx, c0:c0 + chunk]
                weight = step_idx.shape[1] / k_total
                with autocast():
                    out = recompute_log_probs(unet, pipe.scheduler, mb, step_idx, reference_unet=reference)
                log_prob, kl = out if reference is not None else (out, None)
                old_log_prob = mb.log_probs.gather(1, step_idx.to(mb.log_probs.device))
                loss, s = clipped_surrogate_loss(log_prob, old_log_prob, mb_adv, cfg.clip_range, cfg.adv_clip_max)
                if kl is not None:
                    loss = loss + cfg.kl_beta * kl.mean()
                    stats["kl_to_base"].append(kl.mean().item())
                (loss * weight / cfg.gradient_accumulation_steps).backward()
                stats["loss"].append(loss.item())
                stats["approx_kl"].append(s["approx_kl"].item())
                stats["clipfrac"].append(s["clipfrac"].item())
            accum += 1
            if accum % cfg.gradient_accumulation_steps == 0 or start + cfg.train_batch_size >= n:
                if sync is not None:
                    for p in params:
                        if p.grad is not None:
                            p.grad.copy_(sync(p.grad, "mean"))
                stats["grad_norm"].append(float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                accum = 0
    unet.eval()
    return {f"train_{k}": float(np.mean(v)) for k, v in stats.items() if v}


def evaluate(cfg, pipe, unet, eval_prompts, reward_fn, clip, lpips_model, base_images=None):
    """Step 5: fixed eval prompts x fixed seeds; returns (images (P,S,3,H,W) in [0,1], metrics, rewards (P,S))."""
    from .metrics import compute_eval_metrics, image_rewards

    seeds = [EVAL_SEED_BASE + s for s in range(cfg.eval_num_seeds)]
    pairs = [(p, s) for p in eval_prompts for s in seeds]
    traj = sample_trajectories(pipe, [p for p, _ in pairs], [s for _, s in pairs], num_inference_steps=cfg.num_steps,
                               guidance_scale=cfg.guidance_scale, eta=cfg.eta, unet=unet,
                               batch_size=cfg.sample_batch_size)
    images = traj.images.float().cpu().reshape(len(eval_prompts), len(seeds), *traj.images.shape[1:])
    rewards = image_rewards(images, eval_prompts, reward_fn)
    metrics = compute_eval_metrics(images, eval_prompts, clip, base_images=base_images, rewards=rewards,
                                   lpips=lpips_model)
    metrics.update(judge_metrics(images, eval_prompts))
    return images, metrics, rewards


def judge_metrics(images: torch.Tensor, prompts: list[str]) -> dict[str, float]:
    """Toy world only: the geometric judge's attribute accuracy (``judge_<attr>``), a CLIP-free referee.

    Empty for prompts outside the toy grammar (Stable Diffusion runs).
    """
    from .toy import world
    from .toy.judge import attribute_accuracy

    try:
        attrs = world.parse_many(prompts)
    except world.PromptError:
        return {}
    accuracy = attribute_accuracy(images.flatten(0, 1), attrs.repeat_interleave(images.shape[1]))
    return {f"judge_{k}": v for k, v in accuracy.items()}


def save_eval_images(out: Path, epoch: int, images: torch.Tensor, prompts: list[str],
                     rewards: torch.Tensor | None = None) -> None:
    """``eval/epoch_XXXX.npz`` and a PNG grid (rows = seeds).

    The npz holds ``images`` (uint8 prompts x seeds x H x W x 3), ``prompts`` and, when given, ``rewards``
    (float64 prompts x seeds: the task reward of each image, for paired before/after comparisons).
    """
    from diffusers.utils import make_image_grid
    from PIL import Image

    arr = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2).numpy()
    tmp = out / "eval" / f"epoch_{epoch:04d}.tmp.npz"
    extra = {} if rewards is None else {"rewards": torch.as_tensor(rewards).double().numpy()}
    np.savez_compressed(tmp, images=arr, prompts=np.array(prompts), **extra)
    os.replace(tmp, out / "eval" / f"epoch_{epoch:04d}.npz")
    p, s = arr.shape[:2]
    tiles = [Image.fromarray(arr[j, i]) for i in range(s) for j in range(p)]  # row i = seed i, column = prompt
    grid = make_image_grid(tiles, rows=s, cols=p)
    grid = grid.resize((grid.width * 2, grid.height * 2), Image.NEAREST) if arr.shape[2] <= 64 else grid
    grid.save(out / "eval" / f"epoch_{epoch:04d}.png")


def write_metrics(out: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite ``metrics.csv`` atomically (a kill never leaves a truncated file)."""
    tmp = out / (METRICS_FILE + ".tmp")
    pd.DataFrame(rows).to_csv(tmp, index=False)
    os.replace(tmp, out / METRICS_FILE)


def read_metrics(out: Path, upto_epoch: int) -> list[dict[str, Any]]:
    path = out / METRICS_FILE
    if not path.is_file():
        return []
    df = pd.read_csv(path)
    df = df[df["epoch"] <= upto_epoch]  # rows written after the last checkpoint are redone
    return [{k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}
            for row in df.to_dict("records")]


# ----------------------------------------------------------------------------------------------- run
def is_finished(out: str | Path, num_epochs: int) -> bool:
    """Whether ``out`` holds a run trained to ``num_epochs`` (``DONE`` for that count and its metrics row)."""
    out = Path(out)
    try:
        done = int(json.loads((out / "DONE").read_text()).get("epochs", -1)) == num_epochs
    except (OSError, ValueError, AttributeError):
        return False
    if not done or not (out / METRICS_FILE).is_file():
        return False
    return bool((pd.read_csv(out / METRICS_FILE)["epoch"] == num_epochs).any())


def run(cfg: DDPOConfig | dict, progress: bool = True) -> Path:
    """Train one DDPO run to ``cfg.output_dir`` (resuming if a checkpoint is there); returns that folder.

    Under ``accelerate launch`` every process samples and rewards its share of the epoch's samples
    (``samples_per_epoch`` is the total), rewards are gathered so advantages see the whole epoch, and
    gradients are averaged across processes before each optimizer step. The main process evaluates and
    writes files.
    """
    from accelerate import Accelerator

    from .models import load_pipeline
    from .rewards import RewardContext, make_reward

    cfg = cfg if isinstance(cfg, DDPOConfig) else DDPOConfig.from_dict(cfg)
    cfg.validate()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    want = _device(cfg)
    acc = Accelerator(cpu=want.type == "cpu", mixed_precision=cfg.mixed_precision if want.type == "cuda" else "no")
    device, rank, world = acc.device, acc.process_index, acc.num_processes
    if cfg.samples_per_epoch % world:
        raise ValueError(f"samples_per_epoch={cfg.samples_per_epoch} must divide evenly over {world} processes")
    out = Path(cfg.output_dir)
    if acc.is_main_process:
        _prepare_output_dir(cfg)
    acc.wait_for_everyone()
    if is_finished(out, cfg.num_epochs):
        # Nothing to do, and nothing to load: a finished run needs no checkpoint (committed results have none),
        # so rendering its report again, or after training it elsewhere (`grid configs`), never retrains.
        return out
    torch.manual_seed(cfg.seed)

    train_prompts = load_prompts(cfg.prompt_set)
    eval_prompts = load_prompts(cfg.eval_prompt_set)[: cfg.eval_num_prompts]
    pipe = load_pipeline(cfg.model, device=device, dtype=_frozen_dtype(cfg, device))
    clip, aesthetic, lpips_model, lpips_warning = load_scorers(cfg, device)
    reward_fn = make_reward(cfg.reward, RewardContext(clip=clip, aesthetic=aesthetic, lpips=lpips_model, device=device),
                            diversity_lambda=cfg.diversity_lambda, diversity_form=cfg.diversity_form,
                            diversity_feature=cfg.diversity_feature)
    # Eval reports the plain task reward: a penalised eval reward would depend on how eval images are batched
    # and would blur "what did diversity cost in reward" (training logs both: train_reward_mean is penalised,
    # train_base_reward_mean is not).
    task_reward_fn = make_reward(cfg.reward, RewardContext(clip=clip, aesthetic=aesthetic, lpips=lpips_model,
                                                           device=device))
    if lpips_warning and acc.is_main_process:
        (out / "warnings.txt").write_text(lpips_warning + "\n")

    # The policy: which weights train. Progressive starts full and switches to LoRA at the switch epoch.
    unet = pipe.unet
    base_state = finetune.snapshot_base_state(unet)
    reference = None
    if cfg.kl_beta > 0 and cfg.mode != "lora":
        reference = _frozen_copy(unet)  # full fine-tuning changes the base weights: keep a frozen copy
    params = finetune.prepare_unet(unet, cfg.mode, cfg.lora_rank, cfg.lora_alpha)
    if cfg.kl_beta > 0 and cfg.mode == "lora":
        reference = finetune.AdaptersDisabled(unet)  # LoRA keeps the base weights: switch the adapter off
    optimizer = _optimizer(cfg, params, cfg.learning_rate)
    tracker = PerPromptStatTracker(cfg.stat_buffer_size, cfg.stat_min_count)

    # Resume.
    ckpt_dir = out / "checkpoints" / "latest"
    # The main process reads first: reading may repair a checkpoint killed between its two renames.
    state = load_checkpoint_state(ckpt_dir) if acc.is_main_process else None
    acc.wait_for_everyone()
    state = load_checkpoint_state(ckpt_dir) if not acc.is_main_process else state
    start_epoch = 0
    if state is not None:
        if cfg.mode == "progressive" and state["epoch"] >= cfg.progressive_switch_epoch:
            params = finetune.switch_to_lora(unet, cfg.lora_rank, cfg.lora_alpha)
            optimizer = _optimizer(cfg, params, cfg.lora_learning_rate)
        load_unet_tensors(unet, ckpt_dir)
        optimizer_from_tensors(optimizer, ckpt_dir / "optimizer.safetensors")
        tracker.load_state_dict(state.get("stat_buffers", {}))
        start_epoch = state["epoch"]
    rows = read_metrics(out, start_epoch)
    base_images = _load_eval_images(out, 0)

    if acc.is_main_process and start_epoch == 0 and not any(r.get("epoch") == 0 for r in rows):
        t0 = time.time()
        images, metrics, rewards = evaluate(cfg, pipe, unet, eval_prompts, task_reward_fn, clip, lpips_model, None)
        save_eval_images(out, 0, images, eval_prompts, rewards)
        base_images = _load_eval_images(out, 0)  # the saved (uint8) images, exactly as a resumed run sees them
        rows = [{"epoch": 0, **metrics, "param_dist": 0.0, "time_eval_s": time.time() - t0}]
        write_metrics(out, rows)

    bar = tqdm(range(start_epoch + 1, cfg.num_epochs + 1), desc=f"DDPO {cfg.mode}",
               disable=not (progress and acc.is_main_process), initial=start_epoch, total=cfg.num_epochs)
    for epoch in bar:
        row: dict[str, Any] = {"epoch": epoch}
        t0 = time.time()
        # 1. sample (this process's share of the epoch)
        traj = sample_epoch(cfg, pipe, unet, train_prompts, epoch, shard=(rank, world))
        row["time_sample_s"] = time.time() - t0
        # 2. reward, gathered over processes (process-major order)
        t0 = time.time()
        rewards, info = reward_fn(traj.images, traj.prompts, batch_index=epoch)
        all_rewards = acc.gather(rewards.to(device).float()).cpu().numpy()
        pairs = epoch_prompts(cfg, train_prompts, epoch)
        all_prompts = [p for k in range(world) for p, _ in pairs[k::world]]  # the order gather() uses
        row.update(train_reward_mean=float(all_rewards.mean()), train_reward_std=float(all_rewards.std()),
                   train_unique_prompts=len(set(all_prompts)), train_samples=len(all_rewards))
        if "base_reward" in info:
            row["train_base_reward_mean"] = float(np.mean(np.asarray(info["base_reward"])))
            row["train_similarity_mean"] = float(np.mean(np.asarray(info["similarity"])))
        row["time_reward_s"] = time.time() - t0
        # 3. advantages over the whole epoch; keep this process's block
        advantages = compute_advantages(cfg, tracker, all_prompts, all_rewards)
        local = len(traj)
        advantages = advantages[rank * local:(rank + 1) * local]
        # 4. PPO
        t0 = time.time()
        row.update(ppo_update(cfg, pipe, unet, params, optimizer, traj, advantages, epoch, reference,
                              sync=acc.reduce if world > 1 else None, autocast=acc.autocast))
        row["time_train_s"] = time.time() - t0
        row["learning_rate"] = optimizer.param_groups[0]["lr"]
        del traj
        # progressive: after `progressive_switch_epoch` full epochs, freeze and continue with a fresh LoRA.
        if cfg.mode == "progressive" and epoch == cfg.progressive_switch_epoch:
            params = finetune.switch_to_lora(unet, cfg.lora_rank, cfg.lora_alpha)
            optimizer = _optimizer(cfg, params, cfg.lora_learning_rate)
        row["param_dist"] = finetune.param_distance_from_base(unet, base_state)
        row["phase"] = "lora" if finetune.has_lora(unet) else "full"
        # 5. evaluate, 6. log + checkpoint (main process)
        if acc.is_main_process:
            if epoch % cfg.eval_every == 0 or epoch == cfg.num_epochs:
                t0 = time.time()
                images, metrics, rewards = evaluate(cfg, pipe, unet, eval_prompts, task_reward_fn, clip, lpips_model,
                                                    base_images)
                save_eval_images(out, epoch, images, eval_prompts, rewards)
                row.update(metrics)
                row["time_eval_s"] = time.time() - t0
            rows = [r for r in rows if r["epoch"] < epoch] + [row]
            if epoch % cfg.checkpoint_every == 0 or epoch == cfg.num_epochs:
                whole = cfg.mode != "lora"
                save_checkpoint(ckpt_dir, unet, optimizer, {"epoch": epoch, "stat_buffers": tracker.state_dict()},
                                whole_unet=whole, export_lora=finetune.has_lora(unet),
                                export_unet=whole and epoch == cfg.num_epochs)
            write_metrics(out, rows)  # after the checkpoint: a row never exists without its state
        acc.wait_for_everyone()
        bar.set_postfix(reward=f"{row['train_reward_mean']:.3f}", kl=f"{row.get('train_approx_kl', 0):.2e}")
    if acc.is_main_process:
        (out / "DONE").write_text(json.dumps({"epochs": cfg.num_epochs}) + "\n")
    return out


def _optimizer(cfg: DDPOConfig, params, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                             weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon)


def _frozen_copy(unet):
    import copy

    return copy.deepcopy(unet).requires_grad_(False).eval()


def _load_eval_images(out: Path, epoch: int) -> torch.Tensor | None:
    path = out / "eval" / f"epoch_{epoch:04d}.npz"
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        return torch.from_numpy(data["images"]).permute(0, 1, 4, 2, 3).float() / 255
