"""Does stock diffusers plus a run's ``final/lora`` reproduce the run's final eval images?

    python benchmarks/check_stock_lora.py RUN [--out results/checks/<name>.txt]

Loads the run's base model with ``StableDiffusion3Pipeline.from_pretrained`` (or ``StableDiffusionPipeline`` with
the run's DDIM scheduler settings) and nothing of ddpo-study, calls ``pipe.load_lora_weights(RUN/final/lora)``,
samples every eval prompt x seed (ddpo-study is used only to read the run folder) of the run's last saved eval the way the run's eval did (the pipeline call with
one ``torch.Generator`` per image, the run's steps and guidance), and compares with the saved images in 8-bit
levels. Prints (and with ``--out`` writes) one line per check; exit status 1 on a mismatch. Not a test: a check
of a committed run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ddpo_study.config import EVAL_SEED_BASE  # the seeds every run's eval used (read, not re-implemented)
from ddpo_study.models import resolve_model
from ddpo_study.report.results import cell_eval_images
from ddpo_study.rundir import eval_epochs, read_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a finished LoRA run folder with final/lora and saved eval images")
    ap.add_argument("--out", help="also write the lines here")
    ap.add_argument("--batch", type=int, default=32, help="images per pipeline call")
    args = ap.parse_args()
    run = Path(args.run)
    cfg = read_config(run)
    lora = run / "final" / "lora"
    epochs = eval_epochs(run)
    if not lora.is_dir() or not epochs:
        raise SystemExit(f"error: {run} needs final/lora and saved eval images")
    torch.set_num_threads(1)
    from diffusers import DDIMScheduler, StableDiffusion3Pipeline, StableDiffusionPipeline

    base = Path(resolve_model(cfg["model"]))
    index = json.loads((base / "model_index.json").read_text())
    flow = index["_class_name"] == "StableDiffusion3Pipeline"
    if flow:
        extra = {} if (base / "text_encoder_3").is_dir() else dict(text_encoder_3=None, tokenizer_3=None)
        pipe = StableDiffusion3Pipeline.from_pretrained(base, local_files_only=True, **extra)
        call = {}
    else:
        pipe = StableDiffusionPipeline.from_pretrained(base, local_files_only=True, safety_checker=None,
                                                       requires_safety_checker=False)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        call = {"eta": cfg.get("eta", 1.0)}
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(lora))
    epoch = epochs[-1]
    ref, prompts = cell_eval_images(run, epoch)  # (prompts, seeds, H, W, 3) uint8
    n_prompts, n_seeds = ref.shape[:2]
    flat = [(p, EVAL_SEED_BASE + s) for p in prompts[:n_prompts] for s in range(n_seeds)]
    steps = cfg.get("eval_num_steps") or cfg["num_steps"]
    images = []
    with torch.inference_mode():
        for i in range(0, len(flat), args.batch):
            chunk = flat[i:i + args.batch]
            gens = [torch.Generator().manual_seed(s) for _, s in chunk]
            out = pipe(prompt=[p for p, _ in chunk], num_inference_steps=steps, guidance_scale=cfg["guidance_scale"],
                       generator=gens, output_type="np", **call).images
            images.append((np.clip(out, 0, 1) * 255).round().astype(np.uint8))
    new = np.concatenate(images).reshape(ref.shape)
    diff = np.abs(new.astype(np.int16) - ref.astype(np.int16))
    ok = diff.mean() < 0.5 and diff.max() <= 1
    lines = [
        f"# python benchmarks/check_stock_lora.py {' '.join(sys.argv[1:])}  ({time.strftime('%Y-%m-%d %H:%M')})",
        f"run {run} (model {cfg['model']}, algorithm {cfg.get('algorithm', 'ddpo')}, mode {cfg['mode']}), eval epoch {epoch}",
        f"stock {type(pipe).__name__}.from_pretrained + load_lora_weights('{lora}'), {steps} steps, "
        f"guidance {cfg['guidance_scale']}, one generator per image (seeds {EVAL_SEED_BASE}..)",
        f"{new.shape[0] * new.shape[1]} images: max |diff| {int(diff.max())} levels, mean {diff.mean():.4f}, "
        f"identical pixels {(diff == 0).mean():.4f}: {'REPRODUCED' if ok else 'MISMATCH'}",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
