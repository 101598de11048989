"""The DDPO training loop (Black et al. 2023, Algorithm 1 with PPO), one run = one grid cell.

    setup     : pipeline, policy parameters (lora / full / progressive), optimizer, stat tracker, rewards
    for epoch in 1..N:  train_epoch
        1. sample     : trajectories x_T..x_0 of the current policy, with per-step log-probs
        2. reward     : r(x_0, prompt), optionally minus a diversity penalty, gathered over processes
        3. advantages : rewards normalised per prompt (or per batch)
        4. PPO        : optimizer steps over minibatches and random timestep subsets, clipped surrogate
                        (+ optional KL to the base model); after each step the step controller measures the
                        policy's move (KL before -> after) and adapts the learning rate toward ``target_kl``
        5. phase      : progressive mode switches from full fine-tuning to LoRA at its switch epoch
    driver    : evaluate every k epochs, checkpoint (atomic), log; a re-run resumes from the last checkpoint

Every random draw of epoch ``e`` (prompts, sampling seeds, minibatch order, timestep subsets) is derived
from ``(seed, e)``, so a resumed run continues exactly as an uninterrupted one would. ``metrics.csv`` has
one row per epoch: row 0 is the base model, row ``e`` the state after ``e`` updates (its ``train_*``
columns describe the samples drawn at the start of epoch ``e``).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from . import finetune
from .checkpoint import (
    export_final,
    load_checkpoint_state,
    load_lora_into,
    load_unet_tensors,
    optimizer_from_tensors,
    save_checkpoint,
)
from .config import DDPOConfig
from .evaluation import evaluate
from .ppo import StepController, clipped_surrogate_loss, select_timesteps
from .prompts import load_prompts
from .rundir import (
    is_finished,
    load_eval_images,
    prepare_output_dir,
    read_metrics,
    save_eval_images,
    write_done,
    write_metrics,
)
from .sampler import ddim_gaussian_kl, recompute_log_probs, sample_trajectories, transition_outputs
from .stat_tracking import PerPromptStatTracker, global_advantages


# ----------------------------------------------------------------------------------------------- setup
def frozen_dtype(cfg: DDPOConfig, device: torch.device) -> torch.dtype:
    """The dtype of the frozen weights: fp32 on the CPU, else ``cfg.mixed_precision``."""
    if device.type == "cpu" or cfg.mixed_precision == "no":
        return torch.float32
    return {"fp16": torch.float16, "bf16": torch.bfloat16}[cfg.mixed_precision]


def make_optimizer(cfg: DDPOConfig, params, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                             weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon)


def optimizer_steps_per_epoch(cfg: DDPOConfig, world: int = 1) -> int:
    """Optimizer steps in one epoch; raises ``ValueError`` unless the epoch splits evenly.

    One step consumes ``train_batch_size x gradient_accumulation_steps`` samples of the epoch, counted over
    all processes together, so the steps (and their gradients) are the same whatever the process count.
    """
    per_step = cfg.train_batch_size * cfg.gradient_accumulation_steps
    if cfg.samples_per_epoch % world:
        raise ValueError(f"samples_per_epoch={cfg.samples_per_epoch} must divide evenly over {world} processes")
    if cfg.samples_per_epoch % per_step:
        raise ValueError(f"samples_per_epoch={cfg.samples_per_epoch} must be a multiple of train_batch_size x "
                         f"gradient_accumulation_steps = {per_step} (the samples of one optimizer step)")
    return cfg.inner_epochs * cfg.samples_per_epoch // per_step


def _epoch_rng(cfg: DDPOConfig, epoch: int, stream: int) -> np.random.Generator:
    """Independent, reproducible randomness for (run seed, epoch, purpose)."""
    return np.random.default_rng([cfg.seed, epoch, stream])


def load_scorers(cfg: DDPOConfig, device: torch.device):
    """The CLIP scorer, aesthetic MLP and (if available) LPIPS used by rewards and metrics."""
    from .metrics import maybe_load_lpips
    from .models import load_aesthetic, load_clip, resolve_model

    model_dir = Path(resolve_model(cfg.model))
    clip_path = cfg.clip_model or (str(model_dir / "clip") if (model_dir / "clip").is_dir()
                                   else "openai/clip-vit-large-patch14")
    clip = load_clip(clip_path, device)
    aesthetic_path = cfg.aesthetic_model or (str(model_dir / "aesthetic") if (model_dir / "aesthetic").is_dir() else "")
    aesthetic = load_aesthetic(aesthetic_path, device) if aesthetic_path else None
    lpips_model, lpips_warning = maybe_load_lpips(device)
    return clip, aesthetic, lpips_model, lpips_warning


@dataclass
class RunState:
    """Everything a run holds across epochs: built once by :func:`setup`, advanced by :func:`train_epoch`."""

    cfg: DDPOConfig
    acc: Any  #: the accelerate.Accelerator (device, processes, gather/reduce, trackers)
    out: Path
    pipe: Any
    params: list  #: the trainable tensors of the current phase
    optimizer: torch.optim.Optimizer
    tracker: PerPromptStatTracker
    reference: Any  #: the frozen base policy for the KL penalty, or None
    reward_fn: Any  #: the training reward (task reward minus any diversity penalty)
    task_reward_fn: Any  #: the plain task reward, for evaluation
    clip: Any
    lpips: Any
    train_prompts: list[str]
    eval_prompts: list[str]
    base_state: dict  #: the starting UNet's effective weights, for param_distance_from_base
    controller: StepController | None
    start_epoch: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    base_images: torch.Tensor | None = None  #: epoch-0 eval images, for the distance-from-base metrics
    base_embeds: torch.Tensor | None = None  #: their CLIP embeddings, computed once per run

    def set_base_images(self, images: torch.Tensor | None) -> None:
        from .metrics import grid_embeds

        self.base_images = images
        self.base_embeds = None if images is None else grid_embeds(images, self.clip)

    @property
    def unet(self):
        return self.pipe.unet

    @property
    def rank_world(self) -> tuple[int, int]:
        return self.acc.process_index, self.acc.num_processes


def _policy_optimizer(cfg: DDPOConfig, unet, phase: str):
    """Make ``unet`` trainable for ``phase`` ('lora' or 'full') and return (params, optimizer)."""
    if phase == "lora" and cfg.mode == "progressive":
        params = finetune.switch_to_lora(unet, cfg.lora_rank, cfg.lora_alpha, target_modules=cfg.lora_target_modules)
    else:
        params = finetune.prepare_unet(unet, phase, cfg.lora_rank, cfg.lora_alpha, cfg.lora_target_modules)
    lr = cfg.lora_learning_rate if phase == "lora" else cfg.full_learning_rate
    return params, make_optimizer(cfg, params, lr)


def phase_of(cfg: DDPOConfig, epochs_done: int) -> str:
    """'lora' or 'full': which weights train after ``epochs_done`` epochs (progressive switches once)."""
    if cfg.mode == "progressive":
        return "lora" if epochs_done >= cfg.progressive_switch_epoch else "full"
    return cfg.mode


def setup(cfg: DDPOConfig) -> RunState:
    """Load models, rewards and prompts, build the policy and optimizer, and resume from a checkpoint."""
    from accelerate import Accelerator

    from .models import load_pipeline, resolve_device
    from .rewards import RewardContext, make_reward

    want = resolve_device(cfg.device)
    acc = Accelerator(cpu=want.type == "cpu", mixed_precision=cfg.mixed_precision if want.type == "cuda" else "no",
                      log_with=cfg.trackers or None, project_dir=cfg.output_dir)
    steps = optimizer_steps_per_epoch(cfg, acc.num_processes)
    acc.print(f"DDPO {cfg.mode}: {cfg.samples_per_epoch} samples/epoch over {acc.num_processes} process(es), "
              f"{steps} optimizer step(s)/epoch of {cfg.train_batch_size * cfg.gradient_accumulation_steps} samples "
              f"(train_batch_size {cfg.train_batch_size} x gradient_accumulation_steps "
              f"{cfg.gradient_accumulation_steps}) x inner_epochs {cfg.inner_epochs}"
              + (f"; step controller target_kl {cfg.target_kl:g}" if cfg.target_kl else ""))
    out = Path(cfg.output_dir)
    torch.manual_seed(cfg.seed)
    train_prompts = load_prompts(cfg.prompt_set)
    eval_prompts = load_prompts(cfg.eval_prompt_set)[: cfg.eval_num_prompts]
    pipe = load_pipeline(cfg.model, device=acc.device, dtype=frozen_dtype(cfg, acc.device))
    clip, aesthetic, lpips_model, lpips_warning = load_scorers(cfg, acc.device)
    ctx = RewardContext(clip=clip, aesthetic=aesthetic, lpips=lpips_model, device=acc.device)
    reward_fn = make_reward(cfg.reward, ctx, diversity_lambda=cfg.diversity_lambda, diversity_form=cfg.diversity_form,
                            diversity_feature=cfg.diversity_feature)
    if acc.is_main_process:
        prepare_output_dir(cfg)
        if lpips_warning:
            (out / "warnings.txt").write_text(lpips_warning + "\n")
        if cfg.trackers:
            acc.init_trackers(out.name, config=cfg.to_dict())
    acc.wait_for_everyone()

    unet = pipe.unet
    base_state = finetune.snapshot_base_state(unet)
    reference = None
    if cfg.kl_beta > 0 and cfg.mode != "lora":
        reference = _frozen_copy(unet)  # full fine-tuning changes the base weights: keep a frozen copy
    ckpt_dir = out / "checkpoints" / "latest"
    # The main process reads first: reading may repair a checkpoint killed between its two renames.
    ckpt = load_checkpoint_state(ckpt_dir) if acc.is_main_process else None
    acc.wait_for_everyone()
    ckpt = load_checkpoint_state(ckpt_dir) if not acc.is_main_process else ckpt
    start_epoch = ckpt["epoch"] if ckpt else 0
    if cfg.mode == "progressive":
        finetune.prepare_unet(unet, "full")  # the full phase's weights exist (and load) before any switch
    params, optimizer = _policy_optimizer(cfg, unet, phase_of(cfg, start_epoch))
    if cfg.init_lora and ckpt is None:  # a resume loads the adapter from its checkpoint below instead
        load_lora_into(unet, cfg.init_lora)
    if cfg.kl_beta > 0 and cfg.mode == "lora":
        reference = finetune.AdaptersDisabled(unet)  # LoRA keeps the base weights: switch the adapter off
    tracker = PerPromptStatTracker(cfg.stat_buffer_size, cfg.stat_min_count)
    if ckpt is not None:
        load_unet_tensors(unet, ckpt_dir)
        optimizer_from_tensors(optimizer, ckpt_dir / "optimizer.safetensors")
        tracker.load_state_dict(ckpt.get("stat_buffers", {}))
    state = RunState(cfg=cfg, acc=acc, out=out, pipe=pipe, params=params, optimizer=optimizer, tracker=tracker,
                     reference=reference, reward_fn=reward_fn, task_reward_fn=make_reward(cfg.reward, ctx),
                     clip=clip, lpips=lpips_model, train_prompts=train_prompts, eval_prompts=eval_prompts,
                     base_state=base_state, controller=StepController(cfg.target_kl) if cfg.target_kl else None,
                     start_epoch=start_epoch, rows=read_metrics(out, start_epoch))
    state.set_base_images(load_eval_images(out, 0))
    return state


# ----------------------------------------------------------------------------------------------- one epoch
def train_epoch(s: RunState, epoch: int) -> dict[str, Any]:
    """One epoch of DDPO's Algorithm 1 on ``s`` (weights, optimizer and tracker change); returns its row."""
    row: dict[str, Any] = {"epoch": epoch}
    cpu0 = time.process_time()
    rank, world = s.rank_world
    with _timed(row, "sample"):
        traj = sample_epoch(s.cfg, s.pipe, s.unet, s.train_prompts, epoch, shard=(rank, world))    # 1. sample
    with _timed(row, "reward"):
        rewards, prompts, info = epoch_rewards(s, traj, epoch)                                     # 2. reward
    advantages = compute_advantages(s.cfg, s.tracker, prompts, rewards)                           # 3. advantages
    local = advantages[rank::world]  # this process's samples, in its trajectory's order
    with _timed(row, "train"):
        row.update(ppo_update(s.cfg, s.pipe, s.unet, s.params, s.optimizer, traj, local, epoch,  # 4. PPO
                              s.reference, rank=rank, world=world, sync=s.acc.reduce if world > 1 else None,
                              autocast=s.acc.autocast, controller=s.controller))
    if phase_of(s.cfg, epoch) != phase_of(s.cfg, epoch - 1):                                     # 5. phase switch
        s.params, s.optimizer = _policy_optimizer(s.cfg, s.unet, phase_of(s.cfg, epoch))
    row.update(_reward_columns(rewards, prompts, info))
    row["param_dist"] = finetune.param_distance_from_base(s.unet, s.base_state)
    row["phase"] = "lora" if finetune.has_lora(s.unet) else "full"
    row["cpu_epoch_s"] = time.process_time() - cpu0  # this process's CPU time for the epoch, all threads
    return row


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
    """Step 1: this process's share of the epoch's (prompt, seed) pairs (every ``world``-th), as trajectories."""
    pairs = epoch_prompts(cfg, prompts_all, epoch)[shard[0]::shard[1]]
    return sample_trajectories(pipe, [p for p, _ in pairs], [s for _, s in pairs], num_inference_steps=cfg.num_steps,
                               guidance_scale=cfg.guidance_scale, eta=cfg.eta, unet=unet,
                               batch_size=cfg.sample_batch_size, progress=progress)


def epoch_rewards(s: RunState, traj, epoch: int) -> tuple[np.ndarray, list[str], dict]:
    """Step 2: reward this process's images, then gather every process's rewards in the epoch's order.

    Process ``k`` holds samples ``k, k + world, ...`` of the epoch (``sample_epoch``); ``gather`` concatenates
    process blocks, so the blocks are interleaved back: the result is aligned with ``epoch_prompts``.
    """
    rewards, info = s.reward_fn(traj.images, traj.prompts, batch_index=epoch)
    _, world = s.rank_world
    blocks = s.acc.gather(rewards.to(s.acc.device).float()).cpu().numpy().reshape(world, -1)
    prompts = [p for p, _ in epoch_prompts(s.cfg, s.train_prompts, epoch)]
    return blocks.T.reshape(-1), prompts, info


def compute_advantages(cfg, tracker, prompts, rewards: np.ndarray) -> np.ndarray:
    """Step 3: per-prompt normalisation (DDPO) or whole-batch normalisation."""
    if cfg.per_prompt_stat_tracking:
        return tracker.update(prompts, rewards)
    return global_advantages(rewards)


def ppo_update(cfg, pipe, unet, params, optimizer, traj, advantages, epoch, reference=None, rank=0, world=1,
               sync=None, autocast=contextlib.nullcontext, controller: StepController | None = None,
               measure_step_kl: bool = True) -> dict[str, float]:
    """Step 4: PPO's optimizer steps on the epoch's samples; ``traj`` / ``advantages`` are this process's share.

    Each inner epoch draws one permutation of the whole epoch's samples and one timestep subset per sample
    (the same on every process), and cuts the permutation into optimizer steps of ``train_batch_size x
    gradient_accumulation_steps`` samples. A process scores the samples of a step that it holds, in
    minibatches of at most ``train_batch_size``, each minibatch's (sample, timestep) pairs in one batched UNet
    call (or in chunks of ``train_timesteps_per_pass`` timesteps, weighted so the gradient is the same). Each
    minibatch's mean loss is weighted by its share of the step's samples, and ``sync`` sums the processes'
    gradients, so a step's gradient is the mean over its samples whatever the process count. After each step
    the policy's move ``KL(pi_before || pi_after)`` is measured on a fixed probe of the epoch's transitions
    (``train_step_kl``), and ``controller`` (if any) adapts the learning rate from it. ``measure_step_kl=False``
    (benchmarks only; needs ``controller=None``) skips the probe's extra forward passes.
    """
    if controller is not None and not measure_step_kl:
        raise ValueError("the step controller needs the step KL: measure_step_kl must be True")
    n_local = len(traj)
    n = n_local * world
    per_step = cfg.train_batch_size * cfg.gradient_accumulation_steps
    device = traj.latents.device
    adv = torch.as_tensor(advantages, dtype=torch.float32, device=device)
    stats: dict[str, list[float]] = {k: [] for k in ("loss", "approx_kl", "clipfrac", "kl_to_base", "grad_norm",
                                                     "step_kl", "lr")}
    probe_rows, probe_steps = step_kl_probe(cfg, epoch, rank, world)
    probe = traj[probe_rows]
    before = _probe_outputs(unet, pipe, probe, probe_steps) if measure_step_kl else None
    for inner in range(cfg.inner_epochs):
        g = torch.Generator().manual_seed(int(_epoch_rng(cfg, epoch, 1 + inner).integers(2**62)))  # same on all processes
        order = torch.randperm(n, generator=g)
        steps = select_timesteps(cfg.num_steps, cfg.timestep_fraction, n, generator=g)  # (n, K), by global index
        k_total = steps.shape[1]
        chunk = cfg.train_timesteps_per_pass or k_total
        for s0 in range(0, n, per_step):
            step_samples = order[s0:s0 + per_step]
            mine = step_samples[step_samples % world == rank]  # global index i lives on process i % world
            for m0 in range(0, len(mine), cfg.train_batch_size):
                global_idx = mine[m0:m0 + cfg.train_batch_size]
                idx = global_idx // world  # position in this process's trajectory
                mb, mb_adv = traj[idx], adv[idx.to(device)]
                share = len(global_idx) / len(step_samples)
                for c0 in range(0, k_total, chunk):
                    step_idx = steps[global_idx, c0:c0 + chunk]
                    with autocast():
                        out = recompute_log_probs(unet, pipe.scheduler, mb, step_idx, reference_unet=reference)
                    old_log_prob = mb.log_probs.gather(1, step_idx.to(mb.log_probs.device))
                    loss, st = clipped_surrogate_loss(out.log_prob, old_log_prob, mb_adv, cfg.clip_range,
                                                      cfg.adv_clip_max)
                    if out.kl is not None:
                        loss = loss + cfg.kl_beta * out.kl.mean()
                        stats["kl_to_base"].append(out.kl.mean().item())
                    (loss * (step_idx.shape[1] / k_total) * share).backward()
                    stats["loss"].append(loss.item())
                    stats["approx_kl"].append(st["approx_kl"].item())
                    stats["clipfrac"].append(st["clipfrac"].item())
            if sync is not None:
                for p in params:  # a process may hold none of a step's samples: it still joins the sum
                    p.grad = torch.zeros_like(p) if p.grad is None else p.grad
                    p.grad.copy_(sync(p.grad, "sum"))
            stats["grad_norm"].append(float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)))
            stats["lr"].append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if measure_step_kl:
                after = _probe_outputs(unet, pipe, probe, probe_steps)
                stats["step_kl"].append(_probe_kl(pipe, probe, probe_steps, before, after, sync))
                if controller is not None:
                    controller.update(optimizer, stats["step_kl"][-1])
                before = after
    unet.eval()
    row = {}
    for k, v in stats.items():  # every process reduces every stat (a local empty list must not skip a collective)
        mean = _mean_over_processes(v, sync) if (v or sync is not None) else math.nan
        if not math.isnan(mean):
            row[f"train_{k}"] = mean
    row["train_optimizer_steps"] = len(stats["grad_norm"])
    row["learning_rate"] = optimizer.param_groups[0]["lr"]  # the rate the next epoch starts with
    return row


def _mean_over_processes(values: list[float], sync) -> float:
    """The mean of every process's ``values`` together (processes may hold different numbers of minibatches)."""
    if sync is None:
        return float(np.mean(values))
    total = sync(torch.tensor([float(np.sum(values)), float(len(values))], dtype=torch.float64), "sum")
    return float(total[0] / total[1]) if total[1] > 0 else math.nan


def step_kl_probe(cfg: DDPOConfig, epoch: int, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The transitions on which the step KL is measured: (rows of this process's trajectory, ``(R, 1)`` steps).

    Up to 32 of the epoch's samples, each at one random step, drawn from ``(seed, epoch)`` over the whole
    epoch (the same whatever the process count); a process gets those it holds. A probe is enough: the KL is a
    mean over latent dimensions and transitions, and it costs two no-grad forward passes of 32 transitions per
    optimizer step instead of passes over the whole batch.
    """
    g = torch.Generator().manual_seed(int(_epoch_rng(cfg, epoch, 99).integers(2**62)))
    chosen = torch.randperm(cfg.samples_per_epoch, generator=g)[:32]
    steps = torch.randint(0, cfg.num_steps, (len(chosen), 1), generator=g)
    mine = chosen % world == rank  # global sample i lives on process i % world, at row i // world
    return chosen[mine] // world, steps[mine]


@torch.no_grad()
def _probe_outputs(unet, pipe, probe, probe_steps):
    if len(probe) == 0:  # this process holds none of the probe's samples
        return None
    unet.eval()
    out = transition_outputs(unet, pipe.scheduler, probe, probe_steps).noise_pred.float()
    unet.train()
    return out


def _probe_kl(pipe, probe, probe_steps, before, after, sync) -> float:
    """Mean KL(pi_before || pi_after) per dimension over the probe's transitions (of all processes)."""
    if before is None:
        return _mean_over_processes([], sync)
    rows = torch.arange(len(probe)).unsqueeze(1).expand_as(probe_steps).reshape(-1)
    sample = probe.latents[rows, probe_steps.reshape(-1)]
    timesteps = probe.timesteps.to(sample.device)[probe_steps.reshape(-1)]
    kl = ddim_gaussian_kl(pipe.scheduler, before, after, timesteps, sample, eta=probe.eta)
    return _mean_over_processes(kl.double().cpu().tolist(), sync)


def _reward_columns(rewards: np.ndarray, prompts: list[str], info: dict) -> dict[str, float]:
    row = dict(train_reward_mean=float(rewards.mean()), train_reward_std=float(rewards.std()),
               train_unique_prompts=len(set(prompts)), train_samples=len(rewards))
    if "base_reward" in info:  # the penalty was on: log the unpenalised reward and the similarity too
        row["train_base_reward_mean"] = float(np.mean(np.asarray(info["base_reward"])))
        row["train_similarity_mean"] = float(np.mean(np.asarray(info["similarity"])))
    return row


@contextlib.contextmanager
def _timed(row: dict, name: str):
    t0 = time.time()
    yield
    row[f"time_{name}_s"] = time.time() - t0


# ----------------------------------------------------------------------------------------------- driver
def run(cfg: DDPOConfig | dict, progress: bool = True) -> Path:
    """Train one DDPO run to ``cfg.output_dir`` (resuming if a checkpoint is there); returns that folder.

    Under ``accelerate launch`` every process samples and rewards its share of the epoch's samples
    (``samples_per_epoch`` is the total), rewards are gathered so advantages see the whole epoch, and the
    gradients of each optimizer step are summed over processes (see :func:`ppo_update`). The main process
    evaluates and writes files.
    """
    cfg = cfg if isinstance(cfg, DDPOConfig) else DDPOConfig.from_dict(cfg)
    cfg.validate()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if is_finished(cfg.output_dir, cfg.num_epochs):
        # Nothing to do, and nothing to load: a finished run needs no checkpoint (committed results have none),
        # so rendering its report again, or after training it elsewhere (`grid configs`), never retrains; nor
        # rewrites its config.json (a committed run's file stays byte for byte).
        prepare_output_dir(cfg, write=False)
        return Path(cfg.output_dir)
    s = setup(cfg)
    main = s.acc.is_main_process
    if main and s.start_epoch == 0 and not any(r.get("epoch") == 0 for r in s.rows):
        # 0 unless init_lora loaded an adapter: the distance is always from the base model's weights
        s.rows = [{"epoch": 0, **_evaluate(s, 0), "param_dist": finetune.param_distance_from_base(s.unet, s.base_state)}]
        write_metrics(s.out, s.rows)
        _log(s, s.rows[0], 0)
    bar = tqdm(range(s.start_epoch + 1, cfg.num_epochs + 1), desc=f"DDPO {cfg.mode}",
               disable=not (progress and main), initial=s.start_epoch, total=cfg.num_epochs)
    for epoch in bar:
        row = train_epoch(s, epoch)
        if main:
            if epoch % cfg.eval_every == 0 or epoch == cfg.num_epochs:
                row.update(_evaluate(s, epoch))
            s.rows = [r for r in s.rows if r["epoch"] < epoch] + [row]
            if epoch % cfg.checkpoint_every == 0 or epoch == cfg.num_epochs:
                save_checkpoint(s.out / "checkpoints" / "latest", s.unet, s.optimizer,
                                {"epoch": epoch, "stat_buffers": s.tracker.state_dict()},
                                whole_unet=cfg.mode != "lora", export_lora=finetune.has_lora(s.unet))
            write_metrics(s.out, s.rows)  # after the checkpoint: a row never exists without its state
            _log(s, row, epoch)
        s.acc.wait_for_everyone()
        bar.set_postfix(reward=f"{row['train_reward_mean']:.3f}", step_kl=f"{row.get('train_step_kl', 0):.1e}")
    if main:
        export_final(s.out / "final", s.unet, full_unet=cfg.mode != "lora")  # the trained weights, kept after the checkpoints are deleted
        write_done(s.out, cfg.num_epochs)
    if cfg.trackers:
        s.acc.end_training()
    return s.out


def _log(s: RunState, row: dict[str, Any], epoch: int) -> None:
    """The row's numbers to the configured trackers (``log_with``), at step = epoch (NaNs left out), and at an
    eval epoch the eval image grid (``eval/epoch_XXXX.png``: rows are seeds, columns prompts)."""
    if not s.cfg.trackers:
        return
    s.acc.log({k: v for k, v in row.items() if isinstance(v, (int, float)) and v == v}, step=epoch)
    png = s.out / "eval" / f"epoch_{epoch:04d}.png"
    if "reward_mean" not in row or not png.is_file():
        return
    from PIL import Image

    grid = Image.open(png).convert("RGB")
    for tracker in s.acc.trackers:  # the two whose log_images we know the input of; others get the numbers only
        if tracker.name == "tensorboard":  # SummaryWriter.add_images wants a batch and its layout
            tracker.log_images({"eval_grid": np.asarray(grid)[None]}, step=epoch, dataformats="NHWC")
        elif tracker.name == "wandb":
            tracker.log_images({"eval_grid": [grid]}, step=epoch)


def _evaluate(s: RunState, epoch: int) -> dict[str, Any]:
    """Evaluate the current policy, save ``eval/epoch_XXXX.*`` and return the metrics (with the eval time)."""
    t0 = time.time()
    images, metrics, rewards = evaluate(s.cfg, s.pipe, s.unet, s.eval_prompts, s.task_reward_fn, s.clip, s.lpips,
                                        s.base_images, s.base_embeds)
    save_eval_images(s.out, epoch, images, s.eval_prompts, rewards)
    if epoch == 0:
        s.set_base_images(load_eval_images(s.out, 0))  # the saved (uint8) images, as a resumed run sees them
    return {**metrics, "time_eval_s": time.time() - t0}


def _frozen_copy(unet):
    import copy

    return copy.deepcopy(unet).requires_grad_(False).eval()
