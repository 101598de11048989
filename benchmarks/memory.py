"""Peak memory of one DDPO epoch, LoRA vs full fine-tuning.

    python benchmarks/memory.py                                  # toy model, 3 fresh processes per mode
    python benchmarks/memory.py --modes lora full progressive --repeats 5
    python benchmarks/memory.py --model /tmp/tiny-model --prompts /tmp/prompts.txt --samples 8 --sample-batch 4 \
        --train-batch 2 --steps 4 --repeats 1 --threads 1        # smoke test on a tiny pipeline

What it measures. Each (mode, repeat) runs in a FRESH Python process (so one mode's allocations cannot hide
another's) that loads the pipeline, sets the UNet up for the mode (``finetune.prepare_unet``: LoRA r=4 adapters,
or every UNet weight trainable in fp32), builds the AdamW optimizer, then runs one DDPO epoch (the body of
``train.run``'s loop: sample, reward, advantages, PPO pass with its optimizer step, so gradients and Adam's
moments exist at the peak). Modes are interleaved across repeats; the table shows medians.

* CPU: ``resource.getrusage(RUSAGE_SELF).ru_maxrss``, the process's peak resident memory (tracemalloc does not
  see torch's allocator). ``after setup`` is the peak before the epoch (Python, torch, the loaded models);
  ``epoch adds`` = peak at the end - peak before the epoch, i.e. what the epoch itself needed on top
  (activations kept for backward, gradients, optimizer state). Peak RSS includes shared libraries, so the
  ratio of totals understates the difference; read ``epoch adds``.
* CUDA: ``torch.cuda.max_memory_allocated`` (tensors only): ``after setup`` = allocated before the epoch
  (weights), ``peak`` = max during the epoch, ``epoch adds`` = peak - after setup.

``full/lora`` is the ratio of the medians for each column (``--modes`` decides which modes run; the ratio needs
both ``lora`` and ``full``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

MB = 1024 * 1024


def worker(s: dict, mode: str) -> None:
    import torch

    C.quiet()
    C.setup_threads(s["threads"])
    epoch = C.OurEpoch(s, mode)
    cuda = epoch.device.type == "cuda"
    trainable = sum(p.numel() for p in epoch.policy.params)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports kB
    stats = epoch.run()
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    C.send({"mode": mode, "kind": "cuda max_memory_allocated" if cuda else "ru_maxrss", "before_mb": before / MB,
            "peak_mb": peak / MB, "epoch_mb": (peak - before) / MB, "trainable": trainable,
            "seconds": stats["seconds"]})


def run_one(s: dict, mode: str) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if s["threads"]:
        env["OMP_NUM_THREADS"] = str(s["threads"])
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", mode, "--settings", json.dumps(s)],
                          capture_output=True, text=True, env=env, cwd=str(C.REPO_ROOT))
    for line in proc.stdout.splitlines():
        if line.startswith(C.MESSAGE_PREFIX):
            return json.loads(line[len(C.MESSAGE_PREFIX):])
    raise RuntimeError(f"{mode} worker failed (exit {proc.returncode}):\n" + "\n".join(proc.stderr.splitlines()[-25:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    C.add_epoch_args(ap)
    ap.add_argument("--modes", nargs="+", default=["lora", "full"], choices=["lora", "full", "progressive"])
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per mode (interleaved)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--settings", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(json.loads(args.settings), args.worker)
        return

    s = C.epoch_settings(args)
    C.check_settings(s)
    k = int(s["steps"] * s["timestep_fraction"])
    print(f"one DDPO epoch: {s['samples']} images x {s['steps']} steps (sample batch {s['sample_batch']}), PPO on "
          f"{k} steps/image, train batch {s['train_batch']}; model {s['model']}; "
          f"{C.environment_line(str(C.resolve_device(s['device'])))}", flush=True)
    results: dict[str, list[dict]] = {m: [] for m in args.modes}
    for r in range(args.repeats):
        for mode in (args.modes if r % 2 == 0 else args.modes[::-1]):
            res = run_one(s, mode)
            results[mode].append(res)
            print(f"  repeat {r + 1}/{args.repeats} {mode}: peak {res['peak_mb']:.1f} MB "
                  f"(after setup {res['before_mb']:.1f} MB, epoch adds {res['epoch_mb']:.1f} MB)", flush=True)

    kind = results[args.modes[0]][0]["kind"]
    med = {m: {key: C.median([x[key] for x in res]) for key in ("before_mb", "peak_mb", "epoch_mb", "seconds")}
           for m, res in results.items()}
    rows = [[m, f"{results[m][0]['trainable']:,}", f"{med[m]['before_mb']:.1f}", f"{med[m]['peak_mb']:.1f}",
             f"{med[m]['epoch_mb']:.1f}", f"{med[m]['seconds']:.2f}"] for m in args.modes]
    print(f"\nmemory ({kind}), medians over {args.repeats} fresh process(es) per mode:")
    print(C.table(rows, ["mode", "trainable params", "after setup MB", "peak MB", "epoch adds MB", "epoch s"]))
    if "lora" in med and "full" in med:
        ratio = {key: med["full"][key] / med["lora"][key] if med["lora"][key] > 0 else float("nan")
                 for key in ("peak_mb", "epoch_mb")}
        print(f"\nfull/lora: peak {ratio['peak_mb']:.2f}x, epoch adds {ratio['epoch_mb']:.2f}x")


if __name__ == "__main__":
    main()
