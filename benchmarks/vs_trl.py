"""One DDPO epoch of ddpo-study vs TRL 0.23.1's ``DDPOTrainer``, side by side, on the same pipeline and settings.

    python benchmarks/vs_trl.py                                  # toy model, 5 timed repeats
    python benchmarks/vs_trl.py --repeats 9 --threads 2
    python benchmarks/vs_trl.py --model /tmp/tiny-model --prompts /tmp/prompts.txt --samples 8 --sample-batch 4 \
        --train-batch 2 --steps 4 --repeats 1 --warmup 0 --threads 1   # smoke test on a tiny pipeline

What it measures. Wall seconds of one DDPO epoch (sample ``--samples`` images with DDIM and log-probs, reward,
advantages, one PPO pass per inner epoch over random minibatches and timestep subsets) for

* **ddpo-study**: the body of ``ddpo_study.train.run``'s loop (``sample_epoch``, ``compute_advantages``,
  ``ppo.PPO.steps``) without evaluation, logging or checkpoints;
* **TRL**: ``DDPOTrainer.step`` (sampling through TRL's pipeline, rewards, advantages, its per-timestep
  training loop), with saving off.

Both sides use the same pipeline folder, LoRA (r=4, alpha=4, gaussian init, to_q/to_k/to_v/to_out.0: TRL's
hard-wired adapter), AdamW settings, clip ranges, advantage clipping, gradient clipping, timestep fraction,
guidance (also in training: TRL's ``train_cfg``), eta, batch sizes, per-prompt stat tracking and the SAME reward
function (``--reward``: ``jpeg_compressibility`` = minus the JPEG size in kB, or ``brightness`` = mean pixel).
Prompts are drawn uniformly with replacement from ``--prompts`` on both sides. Precision is fp32 unless
``--mixed-precision`` (CUDA only; TRL then casts the whole frozen UNet, we do the same for frozen weights).

How it measures. Each side runs in its own long-lived worker process (models loaded once, ``--warmup`` untimed
epochs first). The parent asks the two workers for one epoch at a time, alternating which side goes first
each repeat, so both see the same machine state; it reports medians over ``--repeats``. The phase columns
split each side's epoch: ``sample`` (sampling, decoding), ``reward`` (reward; ours also includes advantages),
``train`` (the rest: advantages and shuffling for TRL, the PPO pass). ``ratio`` is ours / TRL (target
<= 0.5: ddpo-study at least twice as fast). Each side trains its own copy, so rewards drift apart; only time
is compared.

TRL is never a dependency of the package: on first use this script runs
``pip install --target <--trl-dir> --no-deps trl==0.23.1`` (plus ``--trl-extra`` packages if an import is
missing), and only the TRL worker puts that folder first on ``sys.path``.

Equality checks (run in the TRL worker, after the timing; ``--skip-checks`` to skip), on ``--check-batch``
images sampled from the trained LoRA pipeline:

* (a1) log-probs of OUR sampled transitions, rescored by TRL's ``scheduler_step`` (with per-sample timesteps,
  as TRL trains) vs the log-probs our sampler recorded;
* (a2) log-probs of TRL-sampled transitions (TRL's pipeline) rescored by our ``ddim_step_with_logprob`` vs
  the log-probs TRL recorded;
* (b0) the PPO loss formula on random tensors: ``DDPOTrainer.loss`` (after TRL's advantage clamp) vs our
  ``clipped_surrogate_loss``;
* (b1) the PPO loss AND its gradient on one real batch: the LoRA is perturbed so that the policy differs from
  the sampler's (clip fraction between 0 and 1), then TRL's ``calculate_loss`` per timestep, with gradients
  accumulated over the timesteps as its trainer does, vs our single batched ``recompute_log_probs`` +
  ``clipped_surrogate_loss``. ``grad rel diff`` is max |g_TRL - g_ours| / max |g_TRL| over LoRA parameters.

Max abs differences around 1e-6 (fp32 rounding; the two sides order float operations differently) mean the
two compute the same thing. With fp16 TRL computes log-probs in half precision and the differences grow.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

TRL_VERSION = "0.23.1"
DEFAULT_TRL_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ddpo-study-bench" / f"trl-{TRL_VERSION}"
TRL_PROBE = ("import trl; from trl import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline; "
             "from trl.models.modeling_sd_base import scheduler_step; print(trl.__version__)")


# ----------------------------------------------------------------------------------------------- TRL install
def _probe_trl(trl_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(trl_dir), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", TRL_PROBE], capture_output=True, text=True, env=env,
                          cwd=tempfile.gettempdir())


def ensure_trl(trl_dir: Path, extra: list[str]) -> None:
    """Install trl==TRL_VERSION (no dependencies) into ``trl_dir`` unless it is there; check that it imports."""
    marker = trl_dir / f"trl-{TRL_VERSION}.dist-info"
    if not marker.is_dir():
        print(f"installing trl=={TRL_VERSION} into {trl_dir} (no dependencies; not into the venv)", flush=True)
        trl_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="trl-", dir=trl_dir.parent))
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        "--no-deps", "--target", str(staging), f"trl=={TRL_VERSION}"], check=True)
        if trl_dir.exists():
            import shutil

            shutil.rmtree(trl_dir)
        staging.rename(trl_dir)
    if extra:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                        "--upgrade", "--target", str(trl_dir), *extra], check=True)
    probe = _probe_trl(trl_dir)
    if probe.returncode != 0:
        last = probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else "(no message)"
        raise SystemExit(f"trl {TRL_VERSION} from {trl_dir} does not import in this venv: {last}\n"
                         "If a module is missing, add its package with --trl-extra NAME==VERSION (it goes into the "
                         "same throw-away folder, not into the venv).")
    if probe.stdout.strip() != TRL_VERSION:
        raise SystemExit(f"{trl_dir} holds trl {probe.stdout.strip()}, expected {TRL_VERSION}; delete the folder")


# ----------------------------------------------------------------------------------------------- workers
def ours_worker(s: dict[str, Any]) -> None:
    C.quiet()
    C.setup_threads(s["threads"])
    epoch = C.OurEpoch(s, "lora")
    C.serve({"epoch": epoch.run})


class TrlSide:
    """TRL's ``DDPOTrainer`` on ``DefaultDDPOStableDiffusionPipeline(model)``, with the epoch settings ``s``."""

    def __init__(self, s: dict[str, Any], trl_dir: str):
        sys.path.insert(0, trl_dir)
        import torch
        from accelerate import PartialState

        from ddpo_study.prompts import load_prompts

        C.quiet()
        C.setup_threads(s["threads"])
        self.s = s
        self.device = C.resolve_device(s["device"])
        cpu = self.device.type == "cpu"
        PartialState(cpu=cpu)  # accelerate's logger (used while building TRL's pipeline) needs a state first

        import trl
        from trl import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline

        assert trl.__version__ == TRL_VERSION, trl.__version__
        torch.manual_seed(s["seed"])
        self.prompts = load_prompts(s["prompts"])
        self.pipe = DefaultDDPOStableDiffusionPipeline(s["model"], use_lora=True)
        rng = random.Random(s["seed"])
        reward = C.BENCH_REWARDS[s["reward"]]
        self.config = DDPOConfig(
            exp_name="vs_trl", seed=s["seed"], log_with=None, allow_tf32=bool(s["tf32"]), mixed_precision="no" if cpu else s["mixed_precision"],
            accelerator_kwargs={"cpu": cpu}, save_freq=10**9, num_epochs=10**6,
            sample_num_steps=s["steps"], sample_eta=s["eta"], sample_guidance_scale=s["guidance"],
            sample_batch_size=s["sample_batch"], sample_num_batches_per_epoch=s["samples"] // s["sample_batch"],
            train_batch_size=s["train_batch"], train_use_8bit_adam=False, train_learning_rate=s["lr"],
            train_adam_beta1=0.9, train_adam_beta2=0.999, train_adam_weight_decay=1e-4, train_adam_epsilon=1e-8,
            train_gradient_accumulation_steps=1, train_max_grad_norm=1.0, train_num_inner_epochs=s["inner_epochs"],
            train_cfg=True, train_adv_clip_max=5.0, train_clip_range=1e-4,
            train_timestep_fraction=s["timestep_fraction"], per_prompt_stat_tracking=s["per_prompt_stat_tracking"],
            per_prompt_stat_tracking_buffer_size=s["stat_buffer_size"],
            per_prompt_stat_tracking_min_count=s["stat_min_count"], async_reward_computation=False,
        )
        self._check_config_matches_ours()
        self.trainer = DDPOTrainer(self.config, lambda images, prompts, meta: (reward(images), {}),
                                   lambda: (rng.choice(self.prompts), {}), self.pipe)
        self.pipe.set_progress_bar_config(disable=True)
        self.phase: dict[str, float] = {}
        for method, phase in (("_generate_samples", "sample_s"), ("compute_rewards", "reward_s")):
            setattr(self.trainer, method, self._timed(getattr(self.trainer, method), phase))
        self.global_step = 0

    def _check_config_matches_ours(self) -> None:
        """The hyper-parameters hard-coded above are ddpo-study's defaults: fail loudly if ours changed."""
        cfg = C.ddpo_config(self.s)
        pairs = {"adam_beta1": 0.9, "adam_beta2": 0.999, "adam_weight_decay": 1e-4, "adam_epsilon": 1e-8,
                 "max_grad_norm": 1.0, "adv_clip_max": 5.0, "clip_range": 1e-4, "gradient_accumulation_steps": 1}
        wrong = {k: (getattr(cfg, k), v) for k, v in pairs.items() if getattr(cfg, k) != v}
        if wrong:
            raise RuntimeError(f"ddpo-study config differs from the TRL settings (ours, TRL): {wrong}")

    def _timed(self, fn, phase):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            if phase == "reward_s":
                out = tuple(out)  # TRL returns a lazy zip; materialise it inside the timing
            C.synchronize(self.device)
            self.phase[phase] = self.phase.get(phase, 0.0) + time.perf_counter() - t0
            return out
        return wrapper

    def epoch(self) -> dict[str, float]:
        self.phase = {}
        C.synchronize(self.device)
        t0 = time.perf_counter()
        # epoch=0: TRL saves a checkpoint when epoch % save_freq == 0 and epoch != 0; we never want that.
        self.global_step = self.trainer.step(0, self.global_step)
        C.synchronize(self.device)
        total = time.perf_counter() - t0
        sample_s, reward_s = self.phase.get("sample_s", 0.0), self.phase.get("reward_s", 0.0)
        return {"seconds": total, "sample_s": sample_s, "reward_s": reward_s, "train_s": total - sample_s - reward_s}

    # ------------------------------------------------------------------------------------------- checks
    def checks(self) -> dict[str, Any]:
        import torch

        # Compare the math, not TF32 rounding (which differs between TRL's per-timestep batches and our one call).
        flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            return self._checks()
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags

    def _checks(self) -> dict[str, Any]:
        import torch
        from trl.models.modeling_sd_base import scheduler_step as trl_scheduler_step

        from ddpo_study.ppo import clipped_surrogate_loss, select_timesteps
        from ddpo_study.sampler import (
            ddim_step_with_logprob,
            guided_noise_pred,
            recompute_log_probs,
            sample_trajectories,
        )

        s, pipe, trainer = self.s, self.pipe, self.trainer
        sd, unet, scheduler = pipe.sd_pipeline, pipe.unet, pipe.scheduler
        n, steps, g, eta = s["check_batch"], s["steps"], s["guidance"], s["eta"]
        prompts = [self.prompts[i % len(self.prompts)] for i in range(n)]
        out: dict[str, Any] = {}
        unet.eval()

        # (a1) our sampler's transitions, rescored by TRL's scheduler_step (per-sample timesteps, as TRL trains).
        traj = sample_trajectories(sd, prompts, list(range(n)), steps, g, eta, unet=unet)
        diffs = []
        with torch.no_grad():
            for j in range(steps):
                t = traj.timesteps[j].expand(n)
                eps = guided_noise_pred(unet, traj.latents[:, j], t, traj.prompt_embeds, traj.negative_prompt_embeds, g)
                lp = trl_scheduler_step(scheduler, eps, t, traj.latents[:, j], eta=eta,
                                        prev_sample=traj.latents[:, j + 1]).log_probs
                diffs.append((lp.float() - traj.log_probs[:, j]).abs().max().item())
        out["a1_max_abs_diff"] = max(diffs)
        out["a1_logprob_scale"] = traj.log_probs.abs().mean().item()

        # (a2) TRL's sampler's transitions, rescored by ours.
        torch.manual_seed(s["seed"] + 1)
        with torch.no_grad():
            ids = sd.tokenizer(prompts, return_tensors="pt", padding="max_length", truncation=True,
                               max_length=sd.tokenizer.model_max_length).input_ids.to(self.device)
            embeds = sd.text_encoder(ids)[0]
            neg = trainer.neg_prompt_embed.repeat(n, 1, 1)
            res = pipe(prompt_embeds=embeds, negative_prompt_embeds=neg, num_inference_steps=steps,
                       guidance_scale=g, eta=eta, output_type="pt")
            diffs = []
            for j, t in enumerate(scheduler.timesteps):
                eps = guided_noise_pred(unet, res.latents[j], t, embeds, neg, g)
                _, lp = ddim_step_with_logprob(scheduler, eps, t, res.latents[j], eta=eta, prev_sample=res.latents[j + 1])
                diffs.append((lp - res.log_probs[j].float()).abs().max().item())
        out["a2_max_abs_diff"] = max(diffs)

        # (b0) the loss formula on random tensors (log-ratios around the clip range, advantages beyond the clip).
        gen = torch.Generator().manual_seed(0)
        old = torch.randn(4096, generator=gen)
        new = old + 2e-4 * torch.randn(4096, generator=gen)
        adv = 3.0 * torch.randn(4096, generator=gen)
        cfg = self.config
        trl_loss = trainer.loss(adv.clamp(-cfg.train_adv_clip_max, cfg.train_adv_clip_max), cfg.train_clip_range,
                                torch.exp(new - old))
        our_loss, _ = clipped_surrogate_loss(new, old, adv, cfg.train_clip_range, cfg.train_adv_clip_max)
        out["b0_abs_diff"] = abs(trl_loss.item() - our_loss.item())
        out["b0_loss"] = trl_loss.item()

        # (b1) loss and gradient on one real batch, policy != sampler (perturbed LoRA B matrices).
        k = int(steps * s["timestep_fraction"])
        step_idx = select_timesteps(steps, s["timestep_fraction"], n, generator=gen)  # (n, K)
        adv = (3.0 * torch.randn(n, generator=gen)).to(self.device)
        params = [p for p in unet.parameters() if p.requires_grad]
        lora_b = [p for name, p in unet.named_parameters() if p.requires_grad and "lora_B" in name]
        noise = [torch.randn(p.shape, generator=gen).to(p) for p in lora_b]
        start = [p.detach().clone() for p in lora_b]  # the weights the check trajectory was sampled with
        best = (2.0, 0.0)  # (|clipfrac - 0.5|, scale): perturb so that some ratios are clipped and some not
        for scale in [10.0 ** (e / 2) for e in range(-16, -1)]:
            with torch.no_grad():
                for p, p0, z in zip(lora_b, start, noise):
                    p.copy_(p0 + scale * z)
                lp = recompute_log_probs(unet, scheduler, traj, step_idx).log_prob
                _, st = clipped_surrogate_loss(lp, traj.log_probs.gather(1, step_idx.to(self.device)), adv)
            best = min(best, (abs(st["clipfrac"].item() - 0.5), scale))
            if st["clipfrac"].item() >= 0.5:
                break
        scale = best[1]
        with torch.no_grad():
            for p, p0, z in zip(lora_b, start, noise):
                p.copy_(p0 + scale * z)
        out["b1_lora_B_scale"] = scale
        unet.train()
        rows = torch.arange(n, device=self.device)
        idx = step_idx.to(self.device)
        embeds_cfg = torch.cat([traj.negative_prompt_embeds, traj.prompt_embeds])
        for p in params:
            p.grad = None
        trl_stats = []
        for j in range(k):  # TRL's _train_batched_samples: one timestep per UNet call, gradients accumulated
            i = idx[:, j]
            loss, akl, cf = trainer.calculate_loss(traj.latents[rows, i], traj.timesteps.to(self.device)[i],
                                                   traj.latents[rows, i + 1], traj.log_probs[rows, i], adv, embeds_cfg)
            (loss / k).backward()
            trl_stats.append((loss.item(), akl.item(), cf.item()))
        trl_grads = [p.grad.detach().clone() for p in params]
        for p in params:
            p.grad = None
        lp = recompute_log_probs(unet, scheduler, traj, step_idx).log_prob  # ours: all (sample, step) pairs in one call
        our_loss, st = clipped_surrogate_loss(lp, traj.log_probs.gather(1, idx), adv, cfg.train_clip_range,
                                              cfg.train_adv_clip_max)
        our_loss.backward()
        our_grads = [p.grad.detach().clone() for p in params]
        for p in params:
            p.grad = None
        unet.eval()
        trl_loss = sum(x[0] for x in trl_stats) / k
        out.update(
            b1_trl_loss=trl_loss, b1_our_loss=our_loss.item(), b1_abs_diff=abs(trl_loss - our_loss.item()),
            b1_trl_approx_kl=sum(x[1] for x in trl_stats) / k, b1_our_approx_kl=st["approx_kl"].item(),
            b1_trl_clipfrac=sum(x[2] for x in trl_stats) / k, b1_our_clipfrac=st["clipfrac"].item(),
            b1_grad_max_abs=max(g.abs().max().item() for g in trl_grads),
            b1_grad_rel_diff=max((a - b).abs().max().item() for a, b in zip(trl_grads, our_grads))
            / max(max(g.abs().max().item() for g in trl_grads), 1e-30),
        )
        return out


def trl_worker(s: dict[str, Any], trl_dir: str) -> None:
    side = TrlSide(s, trl_dir)
    C.serve({"epoch": side.epoch, "checks": side.checks})


# ----------------------------------------------------------------------------------------------- parent
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    C.add_epoch_args(ap)
    ap.add_argument("--repeats", type=int, default=5, help="timed epochs per side (interleaved)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed epochs per side first")
    ap.add_argument("--trl-dir", default=str(DEFAULT_TRL_DIR), help="throw-away folder that holds trl")
    ap.add_argument("--trl-extra", nargs="*", default=[],
                    help="extra packages (NAME==VERSION) to put beside trl if one of its imports is missing")
    ap.add_argument("--check-batch", type=int, default=4, help="images used by the equality checks")
    ap.add_argument("--skip-checks", action="store_true", help="only time, no equality checks")
    ap.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--settings", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        s = json.loads(args.settings)
        ours_worker(s) if args.worker == "ours" else trl_worker(s, args.trl_dir)
        return

    s = {**C.epoch_settings(args), "check_batch": args.check_batch}
    C.check_settings(s)
    trl_dir = Path(args.trl_dir).expanduser().resolve()
    ensure_trl(trl_dir, args.trl_extra)
    log_dir = tempfile.mkdtemp(prefix="vs_trl-")
    env = {"OMP_NUM_THREADS": str(s["threads"])} if s["threads"] else {}
    argv = [sys.executable, str(Path(__file__).resolve()), "--settings", json.dumps(s), "--trl-dir", str(trl_dir)]
    k = int(s["steps"] * s["timestep_fraction"])
    print(f"one DDPO epoch: {s['samples']} images x {s['steps']} DDIM steps (sample batch {s['sample_batch']}), "
          f"guidance {s['guidance']}, eta {s['eta']}; PPO on {k} steps/image, train batch {s['train_batch']}, "
          f"{s['inner_epochs']} inner epoch(s); LoRA r=4; reward {s['reward']}; model {s['model']}", flush=True)
    workers = {"ddpo-study": C.Worker("ours", argv + ["--worker", "ours"], env, log_dir),
               "TRL": C.Worker("trl", argv + ["--worker", "trl"], env, log_dir)}
    try:
        for w in workers.values():
            w.wait_ready()
        print(f"workers ready ({C.environment_line(str(C.resolve_device(s['device'])))}; logs in {log_dir}); "
              f"{args.warmup} warm-up + {args.repeats} timed epochs per side", flush=True)
        for _ in range(args.warmup):
            for w in workers.values():
                w.request("epoch")
        results = C.interleaved(workers, "epoch", args.repeats)
        checks = None if args.skip_checks else workers["TRL"].request("checks")
    finally:
        for w in workers.values():
            w.close()

    rows = []
    for name, res in results.items():
        sec = [r["seconds"] for r in res]
        rows.append([name, f"{C.median(sec):.3f}", f"{min(sec):.3f}..{max(sec):.3f}",
                     f"{C.median([r['sample_s'] for r in res]):.3f}", f"{C.median([r['reward_s'] for r in res]):.3f}",
                     f"{C.median([r['train_s'] for r in res]):.3f}"])
    ours = C.median([r["seconds"] for r in results["ddpo-study"]])
    theirs = C.median([r["seconds"] for r in results["TRL"]])
    print()
    print(C.table(rows, ["side", "median s/epoch", "min..max", "sample s", "reward s", "train s"]))
    ratio = ours / theirs
    print(f"\nratio ours/TRL (median epoch time): {ratio:.3f}  (target <= 0.5: {'met' if ratio <= 0.5 else 'NOT met'}); "
          f"TRL/ours speed-up {theirs / ours:.2f}x over {args.repeats} interleaved repeats")
    if checks:
        c = checks
        print(f"\nequality checks ({args.check_batch} images, {s['steps']} steps; log-probs are per-dimension means, "
              f"typical |log p| {c['a1_logprob_scale']:.3g}):")
        lines = [
            ["(a1) log-prob, our transitions: TRL scheduler_step vs our sampler", f"{c['a1_max_abs_diff']:.2e}"],
            ["(a2) log-prob, TRL's transitions: our ddim_step_with_logprob vs TRL", f"{c['a2_max_abs_diff']:.2e}"],
            ["(b0) PPO loss formula, random tensors: DDPOTrainer.loss vs clipped_surrogate_loss",
             f"{c['b0_abs_diff']:.2e}"],
            [f"(b1) PPO loss, one batch (LoRA B += {c['b1_lora_B_scale']:.0e} N(0,1)): TRL {c['b1_trl_loss']:.6g} "
             f"vs ours {c['b1_our_loss']:.6g}",
             f"{c['b1_abs_diff']:.2e}"],
            [f"(b1) approx_kl: TRL {c['b1_trl_approx_kl']:.4g} vs ours {c['b1_our_approx_kl']:.4g}",
             f"{abs(c['b1_trl_approx_kl'] - c['b1_our_approx_kl']):.2e}"],
            [f"(b1) clipfrac: TRL {c['b1_trl_clipfrac']:.4g} vs ours {c['b1_our_clipfrac']:.4g}",
             f"{abs(c['b1_trl_clipfrac'] - c['b1_our_clipfrac']):.2e}"],
            [f"(b1) LoRA gradient, max|g_TRL - g_ours| / max|g_TRL| (max|g_TRL| {c['b1_grad_max_abs']:.3g})",
             f"{c['b1_grad_rel_diff']:.2e}"],
        ]
        print(C.table(lines, ["check", "max abs diff"]))


if __name__ == "__main__":
    main()
