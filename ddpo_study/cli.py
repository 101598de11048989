"""Command line: ``python -m ddpo_study <command>`` (also installed as ``ddpo-study``).

Commands:
  train CONFIG [--set key=value ...]   one DDPO run from a YAML/JSON config (resumes if interrupted)
  demo [--out DIR]                     sample the toy model on eval prompts x seeds and write an image grid
  base-eval [--out FILE]               prompt-following (geometric judge) and diversity of the base toy model
  study [--quick]                      the study's main job (what `make study` runs)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml


def _parse_sets(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


def cmd_train(args) -> int:
    from .config import load_config
    from .train import run

    cfg = load_config(args.config, _parse_sets(args.set))
    out = run(cfg)
    print(f"done: {out}")
    return 0


def cmd_demo(args) -> int:
    import torch
    from diffusers.utils import make_image_grid
    from PIL import Image

    from .models import load_pipeline
    from .prompts import load_prompts
    from .sampler import sample_trajectories

    pipe = load_pipeline(args.model)
    prompts = load_prompts("toy_eval")[: args.prompts]
    seeds = list(range(args.seeds))
    pairs = [(p, s) for s in seeds for p in prompts]  # row = seed, column = prompt
    traj = sample_trajectories(pipe, [p for p, _ in pairs], [s for _, s in pairs], num_inference_steps=20,
                               guidance_scale=args.guidance, eta=1.0, progress=True)
    arr = (traj.images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    grid = make_image_grid([Image.fromarray(a) for a in arr], rows=len(seeds), cols=len(prompts))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    grid.resize((grid.width * 3, grid.height * 3), Image.NEAREST).save(out / "demo_grid.png")
    (out / "demo_prompts.txt").write_text("\n".join(prompts) + "\n")
    print(f"wrote {out / 'demo_grid.png'} (rows: seeds {seeds}; columns: the prompts in demo_prompts.txt)")
    return 0


def cmd_base_eval(args) -> int:
    from .toy import evaluate

    argv = ["--model", args.model, "--guidance", *map(str, args.guidance)]
    if args.out:
        argv += ["--out", args.out]
    evaluate.main(argv)
    return 0


def cmd_study(args) -> int:
    """Until the grid runner lands: base-model report, a demo grid and one short LoRA DDPO run."""
    from .config import DDPOConfig
    from .train import run

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cmd_demo(argparse.Namespace(model="toy", prompts=8, seeds=4, guidance=3.0, out=str(out)))
    epochs = 4 if args.quick else 20
    cfg = DDPOConfig(output_dir=str(out / "lora_toy30_demo"), num_epochs=epochs, eval_every=max(1, epochs // 4))
    run(cfg)
    print(json.dumps({"study": str(out), "run": cfg.output_dir}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ddpo-study", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="one DDPO run from a config file")
    p.add_argument("config")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config keys")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("demo", help="sample the toy model and write an image grid")
    p.add_argument("--model", default="toy")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--out", default="results/demo")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("base-eval", help="judge the base toy model's prompt-following and diversity")
    p.add_argument("--model", default="toy")
    p.add_argument("--guidance", type=float, nargs="+", default=[1.5, 2.0, 3.0, 5.0])
    p.add_argument("--out", default=None)
    p.set_defaults(fn=cmd_base_eval)

    p = sub.add_parser("study", help="the study's main job")
    p.add_argument("--quick", action="store_true", help="fewer epochs")
    p.add_argument("--out", default="results/toy_study")
    p.set_defaults(fn=cmd_study)

    args = ap.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
