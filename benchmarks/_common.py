"""Shared pieces of the benchmark scripts: epoch settings, rewards, our DDPO epoch, worker processes, tables.

Not part of the package: the scripts in this folder import it as a sibling module (``python benchmarks/x.py``
puts ``benchmarks/`` on ``sys.path``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
MESSAGE_PREFIX = "@@BENCH "  # worker -> parent messages are stdout lines starting with this


# ----------------------------------------------------------------------------------------------- settings
def add_epoch_args(ap: argparse.ArgumentParser) -> None:
    """The settings of one DDPO epoch, defaulting to ddpo-study's own config defaults (toy model)."""
    from ddpo_study.config import DDPOConfig

    C = DDPOConfig()  # an instance: defaults that derive from others (the stat tracker's window) are resolved

    g = ap.add_argument_group("one DDPO epoch (the same on every side)")
    g.add_argument("--model", default="data/toy-model",
                   help="pipeline folder (default: the toy model); a tiny pipeline folder works for smoke tests")
    g.add_argument("--prompts", default=C.prompt_set, help="prompt set name or text file (one prompt per line)")
    g.add_argument("--samples", type=int, default=C.samples_per_epoch, help="images sampled per epoch")
    g.add_argument("--sample-batch", type=int, default=C.sample_batch_size, help="images per sampling batch")
    g.add_argument("--steps", type=int, default=C.num_steps, help="DDIM steps")
    g.add_argument("--guidance", type=float, default=C.guidance_scale, help="classifier-free guidance scale")
    g.add_argument("--eta", type=float, default=C.eta, help="DDIM eta")
    g.add_argument("--train-batch", type=int, default=C.train_batch_size, help="samples per PPO minibatch")
    g.add_argument("--timestep-fraction", type=float, default=C.timestep_fraction,
                   help="fraction of each chain's steps trained on")
    g.add_argument("--inner-epochs", type=int, default=C.inner_epochs, help="PPO passes over the epoch's samples")
    g.add_argument("--lr", type=float, default=C.lora_learning_rate, help="AdamW learning rate (LoRA)")
    g.add_argument("--full-lr", type=float, default=C.full_learning_rate, help="AdamW learning rate (full)")
    g.add_argument("--reward", default="jpeg_compressibility", choices=sorted(BENCH_REWARDS),
                   help="reward; one implementation shared by every side")
    g.add_argument("--per-prompt-stat-tracking", action=argparse.BooleanOptionalAction,
                   default=C.per_prompt_stat_tracking, help="per-prompt advantage normalisation")
    g.add_argument("--stat-buffer-size", type=int, default=C.stat_buffer_size)
    g.add_argument("--stat-min-count", type=int, default=C.stat_min_count)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto", help="'auto' (cuda if available), 'cpu' or 'cuda'")
    g.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"],
                   help="frozen weights / forward precision on CUDA (CPU is always fp32)")
    g.add_argument("--tf32", action="store_true",
                   help="allow TF32 matmuls on CUDA on every side (TRL turns them on by default; without this flag "
                        "both sides keep torch's default precision)")
    g.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads in every worker (0 = torch's default)")


def repo_path(path: str) -> str:
    """``path`` as given if it exists from the current directory, else relative to the repository root."""
    p = Path(path).expanduser()
    if p.exists() or p.is_absolute() or not (REPO_ROOT / p).exists():
        return str(p.resolve()) if p.exists() else str(p)
    return str(REPO_ROOT / p)


def epoch_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The epoch settings as a JSON-able dict (what workers receive)."""
    keys = ("model", "prompts", "samples", "sample_batch", "steps", "guidance", "eta", "train_batch",
            "timestep_fraction", "inner_epochs", "lr", "full_lr", "reward", "per_prompt_stat_tracking",
            "stat_buffer_size", "stat_min_count", "seed", "device", "mixed_precision", "tf32", "threads")
    s = {k: getattr(args, k) for k in keys}
    s["model"] = repo_path(s["model"])
    if Path(s["prompts"]).is_file():
        s["prompts"] = str(Path(s["prompts"]).resolve())
    return s


def check_settings(s: dict[str, Any]) -> None:
    if s["samples"] % s["sample_batch"]:
        raise SystemExit(f"--samples ({s['samples']}) must be a multiple of --sample-batch ({s['sample_batch']})")
    if s["sample_batch"] % s["train_batch"]:
        raise SystemExit(f"--sample-batch ({s['sample_batch']}) must be a multiple of --train-batch "
                         f"({s['train_batch']}) (TRL requires it; we keep the sides identical)")
    model = Path(s["model"])
    if not (model / "model_index.json").is_file():
        hint = " (build the toy model with `make toy-model`)" if model.name == "toy-model" else ""
        raise SystemExit(f"--model {model}: not a diffusers pipeline folder{hint}")


def resolve_device(name: str):
    from ddpo_study.models import resolve_device as resolve

    return resolve(name)


def setup_threads(threads: int) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


def synchronize(device) -> None:
    import torch

    if getattr(device, "type", str(device)).startswith("cuda"):
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------- rewards
def _jpeg_compressibility(images):
    from ddpo_study.rewards import jpeg_sizes_kb

    return -jpeg_sizes_kb(images)  # DDPO's compressibility: minus the JPEG size in kB (quality 95)


def _brightness(images):
    return images.detach().float().mean(dim=(1, 2, 3)).cpu()


#: name -> reward(images (B,3,H,W) in [0,1]) -> float32 (B,) on the CPU. Both sides call these same functions.
BENCH_REWARDS: dict[str, Callable] = {"jpeg_compressibility": _jpeg_compressibility, "brightness": _brightness}


# ----------------------------------------------------------------------------------------------- our epoch
def ddpo_config(s: dict[str, Any], mode: str = "lora"):
    """A ddpo-study ``DDPOConfig`` with the epoch settings ``s`` (``--reward`` is applied by :class:`OurEpoch`)."""
    from ddpo_study.config import DDPOConfig

    return DDPOConfig(
        output_dir=os.devnull, seed=s["seed"], model=s["model"], device=s["device"],
        mixed_precision=s["mixed_precision"], prompt_set=s["prompts"], num_steps=s["steps"],
        guidance_scale=s["guidance"], eta=s["eta"], samples_per_epoch=s["samples"],
        sample_batch_size=s["sample_batch"], mode=mode, lora_rank=4, lora_alpha=4.0,
        lora_learning_rate=s["lr"], full_learning_rate=s["full_lr"], train_batch_size=s["train_batch"],
        gradient_accumulation_steps=1, inner_epochs=s["inner_epochs"], timestep_fraction=s["timestep_fraction"],
        per_prompt_stat_tracking=s["per_prompt_stat_tracking"], stat_buffer_size=s["stat_buffer_size"],
        stat_min_count=s["stat_min_count"], num_epochs=1000,
    )


class OurEpoch:
    """One DDPO epoch of ddpo-study, exactly the body of ``train.run``'s loop without eval, logging, checkpoints.

    sample (``train.sample_epoch``) -> reward -> advantages (``train.compute_advantages``) -> PPO
    (``ppo.PPO.steps``). LoRA r=4, alpha=4 on to_q/to_k/to_v/to_out.0 (TRL's hard-wired adapter).
    """

    def __init__(self, s: dict[str, Any], mode: str = "lora"):
        import torch
        from accelerate import Accelerator

        from ddpo_study import finetune, train
        from ddpo_study.models import frozen_dtype, load_pipeline
        from ddpo_study.ppo import PPO
        from ddpo_study.prompts import load_prompts
        from ddpo_study.sampler import DDIMFamily
        from ddpo_study.stat_tracking import PerPromptStatTracker

        self.train = train
        self.cfg = cfg = ddpo_config(s, mode)
        want = resolve_device(s["device"])
        self.acc = Accelerator(cpu=want.type == "cpu",
                               mixed_precision=cfg.mixed_precision if want.type == "cuda" else "no")
        self.device = self.acc.device
        if s.get("tf32"):
            torch.backends.cuda.matmul.allow_tf32 = True
        torch.manual_seed(cfg.seed)
        self.prompts = load_prompts(cfg.prompt_set)
        self.pipe = load_pipeline(cfg.model, device=self.device, dtype=frozen_dtype(cfg.mixed_precision, self.device))
        self.unet = self.pipe.unet
        self.family = DDIMFamily()
        self.policy = finetune.policy_for_epoch(cfg, self.unet, 0)
        self.ppo = PPO(cfg, self.family, measure_step_kl=False)
        self.tracker = PerPromptStatTracker(cfg.stat_buffer_size, cfg.stat_min_count)
        self.reward = BENCH_REWARDS[s["reward"]]
        self.epoch = 0

    def run(self) -> dict[str, float]:
        """One epoch; returns wall seconds in total and per phase, and the mean reward."""
        train, cfg, dev = self.train, self.cfg, self.device
        self.epoch += 1
        synchronize(dev)
        t0 = time.perf_counter()
        traj = train.sample_epoch(cfg, self.family, self.pipe, self.unet, self.prompts, self.epoch)
        synchronize(dev)
        t1 = time.perf_counter()
        rewards = self.reward(traj.images).numpy()
        advantages = train.compute_advantages(cfg, self.tracker, traj.prompts, rewards)
        t2 = time.perf_counter()
        stats = self.ppo.steps(self.pipe, self.unet, self.policy, traj, advantages, self.epoch,
                               autocast=self.acc.autocast)
        synchronize(dev)
        t3 = time.perf_counter()
        return {"seconds": t3 - t0, "sample_s": t1 - t0, "reward_s": t2 - t1, "train_s": t3 - t2,
                "reward_mean": float(rewards.mean()), "approx_kl": stats.get("train_approx_kl", float("nan"))}


# ----------------------------------------------------------------------------------------------- workers
def send(message: dict[str, Any]) -> None:
    """Worker side: one message to the parent (a prefixed JSON line on the real stdout)."""
    sys.__stdout__.write(MESSAGE_PREFIX + json.dumps(message) + "\n")
    sys.__stdout__.flush()


def serve(handlers: dict[str, Callable[[], dict[str, Any]]]) -> None:
    """Worker side: announce readiness, then answer one command per stdin line until ``quit``/EOF."""
    send({"ready": True})
    for line in sys.stdin:
        cmd = line.strip()
        if not cmd:
            continue
        if cmd == "quit":
            break
        try:
            send({"ok": True, **handlers[cmd]()})
        except Exception as err:  # report, keep serving: the parent decides
            import traceback

            send({"ok": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()})


class Worker:
    """Parent side: a long-lived worker process (model loaded once) that runs commands on request.

    Its stderr (warnings, progress bars) goes to a log file whose tail is shown if the worker fails.
    """

    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None, log_dir: str | None = None):
        self.name = name
        log_dir = log_dir or tempfile.mkdtemp(prefix="ddpo-bench-")
        self.log_path = Path(log_dir) / f"{name}.log"
        self._log = open(self.log_path, "w")
        full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     text=True, env=full_env, cwd=str(REPO_ROOT))

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(MESSAGE_PREFIX):
                return json.loads(line[len(MESSAGE_PREFIX):])
            self._log.write(line)  # anything else a library printed
        self._log.flush()
        raise RuntimeError(f"worker {self.name!r} exited (code {self.proc.wait()}); last lines of {self.log_path}:\n"
                           + self.tail())

    def tail(self, n: int = 30) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def wait_ready(self) -> None:
        self._read()

    def request(self, cmd: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        reply = self._read()
        if not reply.get("ok", False):
            raise RuntimeError(f"worker {self.name!r} failed on {cmd!r}: {reply.get('error')}\n"
                               f"{reply.get('traceback', '')}")
        return reply

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.proc.poll() is None:
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=60)
        if self.proc.poll() is None:
            self.proc.kill()
        self._log.close()


def interleaved(workers: dict[str, Worker], cmd: str, repeats: int) -> dict[str, list[dict[str, Any]]]:
    """Run ``cmd`` ``repeats`` times on every worker, one at a time, alternating which side goes first."""
    names = list(workers)
    results: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            results[name].append(workers[name].request(cmd))
        print(f"  repeat {r + 1}/{repeats}: " + ", ".join(f"{n} {results[n][-1]['seconds']:.3f} s" for n in names),
              flush=True)
    return results


# ----------------------------------------------------------------------------------------------- output
def median(values) -> float:
    return float(statistics.median(values))


def table(rows: list[list[Any]], header: list[str]) -> str:
    """A plain fixed-width table (numbers formatted by the caller)."""
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def environment_line(device: str) -> str:
    import platform

    import torch

    where = torch.cuda.get_device_name(0) if device.startswith("cuda") and torch.cuda.is_available() else \
        f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
    versions = []
    for name in ("diffusers", "transformers", "peft"):
        try:
            versions.append(f"{name} {__import__(name).__version__}")
        except Exception:
            pass
    return f"torch {torch.__version__}, {', '.join(versions)} on {where}"


def quiet() -> None:
    """Silence the libraries' progress bars and advisory warnings (they go to the worker logs anyway)."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        import diffusers.utils.logging as dlog

        dlog.set_verbosity_error()
        dlog.disable_progress_bar()
    except Exception:
        pass
    try:
        import transformers.utils.logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except Exception:
        pass
