"""The training loop (DDPO: Black et al. 2023, Algorithm 1), one run = one grid cell.

    setup     : pipeline, sampler family, objective, policy (lora / full / progressive), stat tracker, rewards
    for epoch in 1..N:  train_epoch
        1. sample     : chains from the sampler family (DDIM / the flow SDE with per-step log-probs) of the current
                        policy, or of the objective's own (NFT's old policy, deterministic solver)
        2. reward     : r(x_0, prompt), optionally minus a diversity penalty, gathered over processes
        3. advantages : rewards normalised per prompt (or per batch)
        4. update     : the objective's optimizer steps (PPO-clip, or DiffusionNFT on the forward process; each
                        step held to ``target_kl`` by the step controller; + optional KL to the base model)
        5. phase      : progressive mode switches from full fine-tuning to LoRA at its switch epoch
    driver    : evaluate every k epochs, checkpoint (atomic), log; a re-run resumes from the last checkpoint

Steps 1 and 4 go through the seam of :mod:`ddpo_study.algorithm` (a sampler family and an objective), so a new
algorithm or model family plugs in without a second driver. Every random draw of epoch ``e`` (prompts, sampling
seeds, minibatch order, timestep subsets) is derived from ``(seed, e)`` (:mod:`ddpo_study.seeding`), so a
resumed run continues exactly as an uninterrupted one would. ``metrics.csv`` has one row per epoch: row 0 is
the base model, row ``e`` the state after ``e`` updates (its ``train_*`` columns describe the samples drawn at
the start of epoch ``e``).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from . import finetune, seeding
from .algorithm import Objective, SamplerFamily, family_for, make_objective
from .checkpoint import (
    export_final,
    load_checkpoint_state,
    load_lora_into,
    load_objective_tensors,
    load_unet_tensors,
    optimizer_from_tensors,
    save_checkpoint,
)
from .config import DDPOConfig
from .evaluation import evaluate
from .guard import StopCheck, StopRule
from .prompts import load_prompts
from .rundir import (
    WARNINGS_FILE,
    checkpoint_dir,
    eval_png,
    final_dir,
    is_finished,
    load_eval_images,
    prepare_output_dir,
    read_metrics,
    save_eval_images,
    write_done,
    write_metrics,
)
from .stat_tracking import PerPromptStatTracker, global_advantages

# ----------------------------------------------------------------------------------------------- setup
#: How the progress lines name each algorithm.
ALGORITHM_NAMES = {"ddpo": "DDPO", "flow_grpo": "Flow-GRPO", "nft": "DiffusionNFT"}


def optimizer_steps_per_epoch(cfg: DDPOConfig, world: int = 1) -> int:
    """Optimizer steps in one epoch; raises ``ValueError`` unless the epoch splits evenly over the processes.

    One step consumes ``train_batch_size x gradient_accumulation_steps`` samples of the epoch (the config checks
    that this divides ``samples_per_epoch``), counted over all processes together, so the steps (and their
    gradients) are the same whatever the process count.
    """
    if cfg.samples_per_epoch % world:
        raise ValueError(f"samples_per_epoch={cfg.samples_per_epoch} must divide evenly over {world} processes")
    return cfg.inner_epochs * cfg.samples_per_epoch // (cfg.train_batch_size * cfg.gradient_accumulation_steps)




@dataclass
class RunState:
    """Everything a run holds across epochs: built once by :func:`setup`, advanced by :func:`train_epoch`."""

    cfg: DDPOConfig
    acc: Any  #: the accelerate.Accelerator (device, processes, gather/reduce, trackers)
    out: Path
    pipe: Any
    family: SamplerFamily  #: how the model samples and scores its transitions (``algorithm``)
    objective: Objective  #: what an epoch's update does with the samples (``algorithm``)
    policy: finetune.Policy  #: the phase's trainable tensors, optimizer and KL reference
    tracker: PerPromptStatTracker
    reward_fn: Any  #: the training reward (task reward minus any diversity penalty)
    task_reward_fn: Any  #: the plain task reward, for evaluation
    clip: Any
    lpips: Any
    train_prompts: list[str]
    eval_prompts: list[str]
    base_state: dict  #: the starting network's effective weights, for param_distance_from_base
    start_epoch: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    base_images: torch.Tensor | None = None  #: epoch-0 eval images, for the distance-from-base metrics
    base_embeds: torch.Tensor | None = None  #: their CLIP embeddings, computed once per run

    def set_base_images(self, images: torch.Tensor | None) -> None:
        from .metrics import grid_embeds

        self.base_images = images
        self.base_embeds = None if images is None else grid_embeds(images, self.clip)

    @property
    def denoiser(self):
        """The network the policy trains (the UNet of an SD-type pipeline)."""
        return self.family.denoiser(self.pipe)

    @property
    def rank_world(self) -> tuple[int, int]:
        return self.acc.process_index, self.acc.num_processes


def setup(cfg: DDPOConfig) -> RunState:
    """Load models, rewards and prompts, build the policy and its objective, and resume from a checkpoint."""
    from accelerate import Accelerator

    from .models import frozen_dtype, load_pipeline, load_scorers, resolve_device
    from .rewards import RewardContext, make_reward

    want = resolve_device(cfg.device)
    acc = Accelerator(cpu=want.type == "cpu", mixed_precision=cfg.mixed_precision if want.type == "cuda" else "no",
                      log_with=cfg.trackers or None, project_dir=cfg.output_dir)
    steps = optimizer_steps_per_epoch(cfg, acc.num_processes)
    acc.print(f"{ALGORITHM_NAMES[cfg.algorithm]} {cfg.mode}: {cfg.samples_per_epoch} samples/epoch over {acc.num_processes} process(es), "
              f"{steps} optimizer step(s)/epoch of {cfg.train_batch_size * cfg.gradient_accumulation_steps} samples "
              f"(train_batch_size {cfg.train_batch_size} x gradient_accumulation_steps "
              f"{cfg.gradient_accumulation_steps}) x inner_epochs {cfg.inner_epochs}"
              + (f"; step controller target_kl {cfg.target_kl:g}" if cfg.target_kl else ""))
    out = Path(cfg.output_dir)
    torch.manual_seed(cfg.seed)
    train_prompts = load_prompts(cfg.prompt_set)  # before any model loads: a bad prompt set is one line
    eval_prompts = load_prompts(cfg.eval_prompt_set)[: cfg.eval_num_prompts]
    pipe = load_pipeline(cfg.model, device=acc.device, dtype=frozen_dtype(cfg.mixed_precision, acc.device))
    family = family_for(pipe)
    objective = make_objective(cfg.algorithm, cfg, family)  # before any file is written: a wrong model is one line
    clip, aesthetic, lpips_model, lpips_warning = load_scorers(cfg, acc.device)
    ctx = RewardContext(clip=clip, aesthetic=aesthetic, lpips=lpips_model, device=acc.device)
    if acc.is_main_process:
        prepare_output_dir(cfg)
        if lpips_warning:
            (out / WARNINGS_FILE).write_text(lpips_warning + "\n")
        if cfg.trackers:
            acc.init_trackers(out.name, config=cfg.to_dict())
    acc.wait_for_everyone()

    denoiser = family.denoiser(pipe)
    base_state = finetune.snapshot_base_state(denoiser)
    ckpt_dir = checkpoint_dir(out)
    # The main process reads first: reading may repair a checkpoint killed between its two renames.
    ckpt = load_checkpoint_state(ckpt_dir) if acc.is_main_process else None
    acc.wait_for_everyone()
    ckpt = load_checkpoint_state(ckpt_dir) if not acc.is_main_process else ckpt
    start_epoch = ckpt["epoch"] if ckpt else 0
    policy = finetune.policy_for_epoch(cfg, denoiser, start_epoch)
    tracker = PerPromptStatTracker(cfg.stat_buffer_size, cfg.stat_min_count)
    if ckpt is not None:
        load_unet_tensors(denoiser, ckpt_dir)
        optimizer_from_tensors(policy.optimizer, ckpt_dir / "optimizer.safetensors")
        tracker.load_state_dict(ckpt.get("stat_buffers", {}))
        if hasattr(objective, "load_state_dict"):  # e.g. NFT's old policy
            objective.load_state_dict(load_objective_tensors(ckpt_dir) or {})
    elif cfg.init_lora:  # a resume loads the adapter from its checkpoint instead
        load_lora_into(denoiser, cfg.init_lora)
    state = RunState(cfg=cfg, acc=acc, out=out, pipe=pipe, family=family,
                     objective=objective, policy=policy, tracker=tracker,
                     reward_fn=make_reward(cfg.reward, ctx, diversity_lambda=cfg.diversity_lambda,
                                           diversity_form=cfg.diversity_form,
                                           diversity_feature=cfg.diversity_feature),
                     task_reward_fn=make_reward(cfg.reward, ctx), clip=clip, lpips=lpips_model,
                     train_prompts=train_prompts, eval_prompts=eval_prompts, base_state=base_state,
                     start_epoch=start_epoch, rows=read_metrics(out, start_epoch))
    state.set_base_images(load_eval_images(out, 0))
    return state


# ----------------------------------------------------------------------------------------------- one epoch
def train_epoch(state: RunState, epoch: int) -> dict[str, Any]:
    """One epoch of Algorithm 1 on ``state`` (weights, optimizer and tracker change); returns its row."""
    row: dict[str, Any] = {"epoch": epoch}
    cpu0 = time.process_time()
    rank, world = state.rank_world
    sampling = getattr(state.objective, "sampling", None)  # the objective's own sampling policy (NFT's old one)
    with _timed(row, "sample"), (sampling(state) if sampling else contextlib.nullcontext(state.cfg)) as sample_cfg:
        batch = sample_epoch(sample_cfg, state.family, state.pipe, state.denoiser, state.train_prompts,  # 1. sample
                             epoch, shard=(rank, world))
    with _timed(row, "reward"):
        rewards, prompts, info = epoch_rewards(state, batch, epoch)                                 # 2. reward
    advantages = compute_advantages(state.cfg, state.tracker, prompts, rewards)                    # 3. advantages
    with _timed(row, "train"):
        row.update(state.objective.update(state, batch, advantages[rank::world], epoch))           # 4. update
    state.policy = finetune.policy_for_epoch(state.cfg, state.denoiser, epoch, state.policy)       # 5. phase
    row.update(_reward_columns(rewards, prompts, info))
    row["param_dist"] = finetune.param_distance_from_base(state.denoiser, state.base_state)
    row["phase"] = "lora" if finetune.has_lora(state.denoiser) else "full"
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
    rng = seeding.epoch_rng(cfg.seed, epoch, seeding.PROMPTS)
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


def sample_epoch(cfg, family: SamplerFamily, pipe, denoiser, prompts_all, epoch, shard=(0, 1), progress=False):
    """Step 1: this process's share of the epoch's (prompt, seed) pairs (every ``world``-th), sampled."""
    pairs = epoch_prompts(cfg, prompts_all, epoch)[shard[0]::shard[1]]
    return family.sample(pipe, denoiser, [p for p, _ in pairs], [s for _, s in pairs], cfg, progress=progress,
                         epoch=epoch)


def epoch_rewards(state: RunState, batch, epoch: int) -> tuple[np.ndarray, list[str], dict]:
    """Step 2: reward this process's images, then gather every process's rewards in the epoch's order.

    Process ``k`` holds samples ``k, k + world, ...`` of the epoch (``sample_epoch``); ``gather`` concatenates
    process blocks, so the blocks are interleaved back: the result is aligned with ``epoch_prompts``.
    """
    rewards, info = state.reward_fn(batch.images, batch.prompts, batch_index=epoch)
    _, world = state.rank_world
    blocks = state.acc.gather(rewards.to(state.acc.device).float()).cpu().numpy().reshape(world, -1)
    prompts = [p for p, _ in epoch_prompts(state.cfg, state.train_prompts, epoch)]
    return blocks.T.reshape(-1), prompts, info


def compute_advantages(cfg, tracker, prompts, rewards: np.ndarray) -> np.ndarray:
    """Step 3: per-prompt normalisation (DDPO) or whole-batch normalisation."""
    if cfg.per_prompt_stat_tracking:
        return tracker.update(prompts, rewards)
    return global_advantages(rewards)


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
    """Train one run to ``cfg.output_dir`` (resuming if a checkpoint is there); returns that folder.

    Under ``accelerate launch`` every process samples and rewards its share of the epoch's samples
    (``samples_per_epoch`` is the total), rewards are gathered so advantages see the whole epoch, and the
    gradients of each optimizer step are summed over processes (see ``ppo.PPO``). The main process evaluates
    and writes files.
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
    state = setup(cfg)
    main = state.acc.is_main_process
    guard = StopRule.from_config(cfg) if cfg.stop_when_prompts_lost else None
    if main and state.start_epoch == 0 and not any(r.get("epoch") == 0 for r in state.rows):
        # 0 unless init_lora loaded an adapter: the distance is always from the base model's weights
        dist = finetune.param_distance_from_base(state.denoiser, state.base_state)
        state.rows = [{"epoch": 0, **_evaluate(state, 0), "param_dist": dist}]
        if guard is not None:  # epoch 0 is the guard's reference: it passes, and final/ starts as the base
            state.rows[0].update(guard.check(state.rows[0], state.rows[0]).columns())
            export_final(final_dir(state.out), state.denoiser, full_unet=cfg.mode != "lora")
        write_metrics(state.out, state.rows)
        _log(state, state.rows[0], 0)
    bar = tqdm(range(state.start_epoch + 1, cfg.num_epochs + 1), desc=f"{ALGORITHM_NAMES[cfg.algorithm]} {cfg.mode}",
               disable=not (progress and main), initial=state.start_epoch, total=cfg.num_epochs)
    stop = None
    for epoch in bar:
        row = train_epoch(state, epoch)
        if main:
            if epoch % cfg.eval_every == 0 or epoch == cfg.num_epochs:
                row.update(_evaluate(state, epoch))
                stop = _guard(state, guard, row)
            state.rows = [r for r in state.rows if r["epoch"] < epoch] + [row]
            if epoch % cfg.checkpoint_every == 0 or epoch == cfg.num_epochs:
                objective_state = getattr(state.objective, "state_dict", None)
                save_checkpoint(checkpoint_dir(state.out), state.denoiser, state.policy.optimizer,
                                {"epoch": epoch, "stat_buffers": state.tracker.state_dict()},
                                whole_unet=cfg.mode != "lora", export_lora=finetune.has_lora(state.denoiser),
                                objective_tensors=objective_state() if objective_state else None)
            write_metrics(state.out, state.rows)  # after the checkpoint: a row never exists without its state
            _log(state, row, epoch)
        state.acc.wait_for_everyone()
        bar.set_postfix(reward=f"{row['train_reward_mean']:.3f}", step_kl=f"{row.get('train_step_kl', 0):.1e}")
        if guard is not None and _stopping(state, stop):
            break
    if main:
        if stop is None:  # the trained weights, kept after the checkpoints are deleted
            export_final(final_dir(state.out), state.denoiser, full_unet=cfg.mode != "lora")
            write_done(state.out, cfg.num_epochs)
        else:  # final/ already holds the last passing eval's weights (exported when it passed)
            write_done(state.out, stop.epoch, _stop_record(cfg, stop, state.rows))
    if cfg.trackers:
        state.acc.end_training()
    return state.out


def _guard(state: RunState, guard: StopRule | None, row: dict[str, Any]) -> StopCheck | None:
    """The guard at an eval: record its columns; export the weights if the eval passed (``final/`` always holds
    the last passing eval's); return the check if it fired."""
    if guard is None:
        return None
    check = guard.check(row, state.rows[0])
    row.update(check.columns())
    if check.fired:
        state.acc.print(check.line() + f"; stopping, final/ keeps epoch {_kept_epoch(state.rows)}")
        return check
    export_final(final_dir(state.out), state.denoiser, full_unet=state.cfg.mode != "lora")
    return None


def _stopping(state: RunState, stop: StopCheck | None) -> bool:
    """Whether the main process's guard fired (every process leaves the loop together)."""
    if state.acc.num_processes == 1:
        return stop is not None
    flag = torch.tensor([0.0 if stop is None else 1.0], device=state.acc.device)
    return bool(state.acc.reduce(flag, "sum").item() > 0)


def _kept_epoch(rows: list[dict[str, Any]]) -> int:
    """The last eval that passed the guard (whose weights ``final/`` holds)."""
    # a passing row has the guard's numbers and no fired rule ('' is read back as missing after a resume)
    return max(int(r["epoch"]) for r in rows if "guard_cross_ratio" in r and not r.get("guard_fired"))


def _stop_record(cfg: DDPOConfig, stop: StopCheck, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"planned": cfg.num_epochs, "epoch": stop.epoch, "rules": list(stop.fired), "kept_epoch": _kept_epoch(rows),
            "values": {k: v for k, v in stop.columns().items() if k != "guard_fired"}}


def _log(state: RunState, row: dict[str, Any], epoch: int) -> None:
    """The row's numbers to the configured trackers (``log_with``), at step = epoch (NaNs left out), and at an
    eval epoch the eval image grid (``eval/epoch_XXXX.png``: rows are seeds, columns prompts)."""
    if not state.cfg.trackers:
        return
    state.acc.log({k: v for k, v in row.items() if isinstance(v, (int, float)) and v == v}, step=epoch)
    png = eval_png(state.out, epoch)
    if "reward_mean" not in row or not png.is_file():
        return
    from PIL import Image

    grid = Image.open(png).convert("RGB")
    for tracker in state.acc.trackers:  # the two whose log_images we know the input of; others get the numbers only
        if tracker.name == "tensorboard":  # SummaryWriter.add_images wants a batch and its layout
            tracker.log_images({"eval_grid": np.asarray(grid)[None]}, step=epoch, dataformats="NHWC")
        elif tracker.name == "wandb":
            tracker.log_images({"eval_grid": [grid]}, step=epoch)



def _evaluate(state: RunState, epoch: int) -> dict[str, Any]:
    """Evaluate the current policy, save ``eval/epoch_XXXX.*`` and return the metrics (with the eval time)."""
    t0 = time.time()
    images, metrics, rewards = evaluate(state.cfg, state.family, state.pipe, state.denoiser, state.eval_prompts,
                                        state.task_reward_fn, state.clip, state.lpips, state.base_images,
                                        state.base_embeds)
    save_eval_images(state.out, epoch, images, state.eval_prompts, rewards)
    if epoch == 0:
        state.set_base_images(load_eval_images(state.out, 0))  # the saved (uint8) images, as a resumed run sees them
    return {**metrics, "time_eval_s": time.time() - t0}


