"""``python -m ddpo_study monitor --watch DIR --base MODEL``: read each checkpoint another trainer writes, once, as
it appears, and say when the prompts start to go.

The trainer may be any: TRL's DDPO, flow_grpo and DiffusionNFT keep a LoRA per ``checkpoint-<step>/`` (diffusers'
``pytorch_lora_weights.safetensors``, or peft's ``adapter_model.safetensors`` + ``adapter_config.json``, possibly
in a ``lora/`` subfolder); full UNet or SD3 transformer folders work too. Each is read by the diagnose loaders
(:func:`ddpo_study.diagnose.inspect_tuned`, :func:`~ddpo_study.diagnose.load_tuned`) onto a copy of the base's
denoiser (``pipe.unet``; ``pipe.transformer`` for an SD3-type ``--base`` such as ``toy-flow``) and measured by a
:class:`ddpo_study.monitor.Monitor` against the base's reading.

Files in ``--out``: ``monitor.csv`` (one row per checkpoint, the base first: status ``base``/``kept``/``lost``/
``unreadable``, the verdict's ratio and drop, every metric), ``monitor.json`` (the settings: a restart with other
settings is refused, since its rows would not compare), ``base.npz`` (the base's images and rewards, so a restart
does not re-sample it) and the dashboard (:mod:`ddpo_study.dashboard`). A restart reads the CSV and evaluates only
checkpoints not in it; an unreadable checkpoint is recorded with its error and not retried (delete its row to
retry). A checkpoint whose files still change between two looks ``--settle`` seconds apart is not read yet.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .atomic import write_text
from .dashboard import BASE, KEPT, LOST, UNREADABLE

CSV_FILE, SETTINGS_FILE, BASE_FILE = "monitor.csv", "monitor.json", "base.npz"
#: ``checkpoint-1200`` (flow_grpo, DiffusionNFT, diffusers' examples) or ``checkpoint_12`` (accelerate's naming).
CHECKPOINT_NAME = re.compile(r"checkpoint[-_](\d+)")
#: Seconds between the two looks at a checkpoint's files (sizes and mtimes) before it is read.
SETTLE_S = 2.0
#: Seconds between two scans of the watched folder.
INTERVAL_S = 30.0
#: Leading and trailing columns of ``monitor.csv``; the metrics sit between them.
HEAD_COLUMNS = ("checkpoint", "step", "status", "cross_div_ratio", "retrieval_drop", "reward_z", "kind")
TAIL_COLUMNS = ("weights", "error")
#: Metrics only a reading against the base has (the base row's metrics lack them).
DISTANCE_COLUMNS = ("dist_base_pixel", "dist_base_clip")


class WatchError(ValueError):
    """Bad input to the watcher (a missing folder, a results folder made with other settings); one line."""


def checkpoint_step(path: Path) -> int | None:
    m = CHECKPOINT_NAME.fullmatch(Path(path).name)
    return int(m.group(1)) if m else None


def find_checkpoints(folder: Path) -> list[Path]:
    """The ``checkpoint-<step>`` folders in ``folder``, in step order (``checkpoint-1000`` after ``checkpoint-200``)."""
    found = [p for p in Path(folder).iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=lambda p: (checkpoint_step(p), p.name))


def file_state(folder: Path) -> tuple | None:
    """Every file's (relative path, size, mtime) under ``folder``; None when there is no file yet or one vanished
    while looking (a trainer renaming its temporary files)."""
    try:
        state = tuple(sorted((str(p.relative_to(folder)), st.st_size, st.st_mtime_ns)
                             for p in Path(folder).rglob("*") if p.is_file() for st in [p.stat()]))
    except FileNotFoundError:
        return None
    return state or None


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def check_settings(out: Path, settings: dict) -> None:
    """Write ``monitor.json``, or refuse when ``out`` holds one with other settings (its rows would not compare)."""
    path = Path(out) / SETTINGS_FILE
    if path.is_file():
        saved = json.loads(path.read_text())
        for key in sorted(set(saved) | set(settings)):
            if saved.get(key) != settings.get(key):
                raise WatchError(f"{path} was made with other settings ({key}: {saved.get(key)!r}, now "
                                 f"{settings.get(key)!r}): use another --out, or the same settings")
        return
    Path(out).mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(settings, indent=1) + "\n")


@dataclass
class Watcher:
    """Evaluates the checkpoints of ``watch`` with ``monitor`` on ``pipe`` (the base pipeline), writing to ``out``.

    ``sleep`` and ``log`` are parameters so that a test can make files change during the settle wait and read the
    lines printed."""

    watch: Path
    out: Path
    monitor: Any  #: a :class:`ddpo_study.monitor.Monitor`
    pipe: Any
    settle: float = SETTLE_S
    sleep: Callable[[float], None] = time.sleep
    log: Callable[[str], None] = print
    refresh_s: float | None = None  #: the dashboard page reloads itself this often (while watching)
    rows: list[dict] = field(default_factory=list, init=False)
    _waiting: set = field(default_factory=set, init=False, repr=False)

    def __post_init__(self):
        self.watch, self.out = Path(self.watch), Path(self.out)
        if not self.watch.is_dir():
            raise WatchError(f"--watch {self.watch}: no such folder")
        self.out.mkdir(parents=True, exist_ok=True)
        csv_path = self.out / CSV_FILE
        if csv_path.is_file():
            with open(csv_path, newline="") as f:
                reader = csv.DictReader(f)
                self.rows, self._columns = list(reader), list(reader.fieldnames or [])
        else:
            self._columns = []

    # -------------------------------------------------------------------------------------------- the base
    def start(self) -> None:
        """The base's reading: read back from ``base.npz`` after a restart, else measured (and its row written)."""
        from .monitor import Reading

        if (self.out / BASE_FILE).is_file():
            reading = self.monitor.set_reference(Reading.load(self.out / BASE_FILE))
        else:
            reading = self.monitor.set_reference(self.pipe, name=BASE)
            reading.save(self.out / BASE_FILE)
        if self.rows:
            self.log(f"resuming {self.out / CSV_FILE}: {len(self.rows) - 1} checkpoint(s) already read")
        if not any(r["status"] == BASE for r in self.rows):
            self.log(reading.summary())
            self._columns = [*HEAD_COLUMNS, *reading.metrics,
                             *(k for k in DISTANCE_COLUMNS if k not in reading.metrics), *TAIL_COLUMNS]
            self._add({"checkpoint": BASE, "step": 0, "status": BASE, **reading.metrics})
        else:
            self._draw()  # as this version draws it

    # -------------------------------------------------------------------------------------------- scanning
    def poll(self) -> int:
        """One scan: evaluate, in step order, the new checkpoints whose files have settled; returns how many."""
        done = {r["checkpoint"] for r in self.rows}
        new = [c for c in find_checkpoints(self.watch) if c.name not in done]
        ready = self._settled(new)
        for ckpt in ready:
            self._add(self._evaluate(ckpt))
        return len(ready)

    def _settled(self, candidates: list[Path]) -> list[Path]:
        """The leading candidates whose files did not change over ``settle`` seconds (one wait for all of them);
        the first still changing and those after it wait for the next scan, so rows stay in step order."""
        if not candidates:
            return []
        before = {c: file_state(c) for c in candidates}
        self.sleep(self.settle)
        ready = []
        for c in candidates:
            now = file_state(c)
            if now is None or now != before[c]:
                if c.name not in self._waiting:
                    self.log(f"{c.name}: still being written, not read yet")
                    self._waiting.add(c.name)
                break
            ready.append(c)
        return ready

    def _evaluate(self, ckpt: Path) -> dict:
        import torch

        from .diagnose.loading import FULL_KINDS, TunedModelError, inspect_tuned, load_tuned
        from .diagnose.sampling import base_denoiser

        row = {"checkpoint": ckpt.name, "step": checkpoint_step(ckpt)}
        try:
            _kind, path = inspect_tuned(ckpt)
            tuned = load_tuned(path, base_denoiser(self.pipe))
            if tuned.kind not in FULL_KINDS and tuned.adapter is None:
                raise TunedModelError(f"{path}: its LoRA tensors match no layer of this base model")
            row["weights"] = str(path.relative_to(self.watch) if path.is_relative_to(self.watch) else path)
            reading = self.monitor.measure(self.pipe, tuned.unet, name=ckpt.name)
        except torch.cuda.OutOfMemoryError:
            raise
        except (TunedModelError, OSError, RuntimeError) as err:  # RuntimeError: it loads but does not fit the base
            self.log(f"{ckpt.name}: skipped, cannot read it — {_one_line(err)}")
            return {**row, "status": UNREADABLE, "error": _one_line(err)}
        finally:
            tuned = None  # a UNet copy per checkpoint: let it go before the next
        line = reading.summary()
        if reading.lost:
            line += f"; last passing: {self._last_passing()}"
        self.log(line)
        return {**row, "status": LOST if reading.lost else KEPT, "cross_div_ratio": reading.diversity_ratio,
                "retrieval_drop": reading.retrieval_drop, "reward_z": reading.reward_z, "kind": reading.kind,
                **reading.metrics}

    def _last_passing(self) -> str:
        return next((r["checkpoint"] for r in reversed(self.rows) if r["status"] in (KEPT, BASE)), "none")

    def _add(self, row: dict) -> None:
        """Append ``row`` and rewrite ``monitor.csv`` (atomically: a kill leaves the old or the new file) and the
        dashboard."""
        self.rows.append({k: "" if v is None else str(v) for k, v in row.items()})
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self._columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text(self.out / CSV_FILE, buf.getvalue())
        self._draw()

    def _draw(self) -> None:
        from .dashboard import draw

        draw(self.rows, self.out, title=f"monitor: {self.watch.name}", refresh_s=self.refresh_s)

    # -------------------------------------------------------------------------------------------- the loop
    def run(self, once: bool = False, interval: float = INTERVAL_S) -> None:
        """Evaluate the base, then every checkpoint as it appears; ``once``: what is there now, then return."""
        self.start()
        while True:
            self.poll()
            if once:
                break
            self.sleep(interval)
        counts = {s: sum(r["status"] == s for r in self.rows) for s in (KEPT, LOST, UNREADABLE)}
        self.log(f"{sum(counts.values())} checkpoint(s) in {self.out / CSV_FILE}: "
                 + ", ".join(f"{n} {s}" for s, n in counts.items()) + f"; dashboard {self.out / 'dashboard.html'}")


# ================================================================================================ command line
#: ``monitor``'s one-line help and its description (the module's first paragraph), for the CLI's command table.
HELP = "watch another trainer's checkpoints: when do the prompts start to go?"
DESCRIPTION = __doc__.split("\n\n")[0].replace("``", "")


def monitor_arguments(p) -> None:
    """``monitor``'s arguments (its handler is :func:`cmd_monitor`)."""
    p.add_argument("--watch", required=True, metavar="DIR", help="the folder the trainer writes checkpoint-<step>/ in")
    p.add_argument("--base", default="toy", help="base model: toy, toy-flow, sd15, sd35, a pipeline folder (SD or "
                   "SD3) or hub id (default toy)")
    p.add_argument("--prompts", default="", help="prompt set name or file (default: toy_eval for the toy model, "
                   "else sd_animals_30)")
    p.add_argument("--num-prompts", type=int, default=16, help="the first N prompts of the set")
    p.add_argument("--seeds", type=int, default=4, help="images per prompt (seeds EVAL_SEED_BASE + j, shared by "
                   "every prompt)")
    p.add_argument("--reward", default="", help="also score this reward (e.g. aesthetic); default none")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default 20)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default 5)")
    p.add_argument("--eta", type=float, default=None, help="DDIM eta (default 1; an SD3 base's ODE has none)")
    p.add_argument("--clip-model", default="", help="CLIP folder or hub id (default: the toy model's, else "
                   "openai/clip-vit-large-patch14)")
    p.add_argument("--aesthetic-model", default="", help="aesthetic predictor, for --reward aesthetic")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--once", action="store_true", help="evaluate what is there now, then exit")
    p.add_argument("--out", default="", help="results folder (default runs/monitor/<watched folder's name>)")
    p.add_argument("--interval", type=float, default=INTERVAL_S, help="seconds between scans")
    p.add_argument("--settle", type=float, default=SETTLE_S, help="seconds a checkpoint's files must stay unchanged "
                   "before it is read")


def cmd_monitor(args) -> int:
    try:
        watcher = build_watcher(args)
        watcher.run(once=args.once, interval=args.interval)
    except WatchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stopped; a restart with the same --out goes on where this left off")
    return 0


def build_watcher(args, **kwargs) -> Watcher:
    """The base pipeline, scorers, prompts and monitor of the command line's ``args``; ``kwargs`` go to
    :class:`Watcher` (``sleep``, ``log``)."""
    from .config import DDPOConfig
    from .diagnose.sampling import _default_prompts
    from .models import load_pipeline, load_scorers, resolve_device
    from .monitor import Monitor
    from .prompts import load_prompts
    from .rewards import REWARDS, RewardContext, make_reward

    watch = Path(args.watch)
    if not watch.is_dir():
        raise WatchError(f"--watch {watch}: no such folder")
    if args.reward and args.reward not in REWARDS:
        raise WatchError(f"--reward {args.reward}: unknown; known rewards: {', '.join(sorted(REWARDS))}")
    prompts = load_prompts(args.prompts or _default_prompts(args.base, None))[:args.num_prompts]
    defaults = DDPOConfig()
    pick = lambda given, key: getattr(defaults, key) if given is None else given  # noqa: E731
    sampling = dict(num_steps=int(pick(args.steps, "num_steps")),
                    guidance_scale=float(pick(args.guidance, "guidance_scale")), eta=float(pick(args.eta, "eta")))
    out = Path(args.out) if args.out else Path("runs") / "monitor" / watch.resolve().name
    check_settings(out, {"base": args.base, "prompts": prompts, "seeds": args.seeds, "reward": args.reward,
                         "clip_model": args.clip_model, **sampling})
    device = resolve_device(args.device)
    pipe = load_pipeline(args.base, device=device)
    scorer_cfg = DDPOConfig(model=args.base, clip_model=args.clip_model, aesthetic_model=args.aesthetic_model)
    clip, aesthetic, _lpips, _warning = load_scorers(scorer_cfg, device)
    reward = make_reward(args.reward, RewardContext(clip=clip, aesthetic=aesthetic, device=device)) \
        if args.reward else None
    monitor = Monitor(prompts, clip, seeds=args.seeds, reward=reward, batch_size=args.batch_size, **sampling)
    return Watcher(watch, out, monitor, pipe, settle=args.settle, refresh_s=None if args.once else args.interval,
                   **kwargs)
