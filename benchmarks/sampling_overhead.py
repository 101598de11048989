"""What recording a DDPO trajectory costs: our ``sample_trajectories`` vs the plain diffusers pipeline call.

    python benchmarks/sampling_overhead.py                       # toy model, 32 images, 5 timed repeats
    python benchmarks/sampling_overhead.py --images 64 --repeats 9 --threads 2
    python benchmarks/sampling_overhead.py --model /tmp/tiny-model --prompts /tmp/prompts.txt --images 4 \
        --steps 4 --repeats 1 --warmup 0 --threads 1          # smoke test on a tiny pipeline

What it measures. Wall seconds to sample ``--images`` images (prompts drawn from ``--prompts`` in order,
seeds 0..N-1) with DDIM (``--steps``, ``--guidance``, ``--eta``) two ways, on one loaded pipeline:

* **ours**: ``ddpo_study.sampler.sample_trajectories``, which also keeps every latent of the chain, the
  per-step log-probabilities and the text embeddings (what DDPO trains on);
* **plain**: ``pipe(prompts, num_inference_steps=..., guidance_scale=..., eta=..., generator=[one
  torch.Generator per image], output_type="pt")``, diffusers' own loop, which only returns images.

Both run in this process, alternately (which one goes first flips each repeat), after ``--warmup`` untimed
calls each; the table shows medians over ``--repeats``. ``ratio`` = ours / plain: the price of recording the
trajectory (target <= 1.15, i.e. at most 15 % slower than plain sampling).

Same images? Both draw image i's initial latent and every step's noise from its own generator seeded with i,
in float32, so they sample the same chains: ``max |diff|`` (images in [0, 1]) should be float noise (~1e-6;
larger under fp16, where the two loops round differently). A large value would mean the sampler no longer
reproduces diffusers' DDIM.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def main() -> None:
    from ddpo_study.config import DDPOConfig as Cfg

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--model", default="data/toy-model", help="pipeline folder (default: the toy model)")
    ap.add_argument("--prompts", default=Cfg.prompt_set, help="prompt set name or text file")
    ap.add_argument("--images", type=int, default=Cfg.sample_batch_size, help="images per call (one batch)")
    ap.add_argument("--batch-size", type=int, default=0,
                    help="split the images into batches of this size on both sides (0 = one batch)")
    ap.add_argument("--steps", type=int, default=Cfg.num_steps)
    ap.add_argument("--guidance", type=float, default=Cfg.guidance_scale)
    ap.add_argument("--eta", type=float, default=Cfg.eta)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"],
                    help="pipeline dtype on CUDA (CPU is always fp32)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args()

    import torch

    from ddpo_study.models import load_pipeline
    from ddpo_study.prompts import load_prompts
    from ddpo_study.sampler import sample_trajectories

    C.quiet()
    C.setup_threads(args.threads)
    device = C.resolve_device(args.device)
    dtype = torch.float32 if device.type == "cpu" or args.mixed_precision == "no" else \
        {"fp16": torch.float16, "bf16": torch.bfloat16}[args.mixed_precision]
    args.model = C.repo_path(args.model)
    if not (Path(args.model) / "model_index.json").is_file():
        raise SystemExit(f"--model {args.model}: not a diffusers pipeline folder")
    pipe = load_pipeline(args.model, device=device, dtype=dtype)
    all_prompts = load_prompts(args.prompts)
    prompts = [all_prompts[i % len(all_prompts)] for i in range(args.images)]
    seeds = list(range(args.images))
    chunk = args.batch_size or args.images

    def ours():
        return sample_trajectories(pipe, prompts, seeds, num_inference_steps=args.steps,
                                   guidance_scale=args.guidance, eta=args.eta, batch_size=chunk).images

    def plain():
        parts = []
        for i in range(0, args.images, chunk):
            gens = [torch.Generator().manual_seed(s) for s in seeds[i:i + chunk]]
            parts.append(pipe(prompts[i:i + chunk], num_inference_steps=args.steps, guidance_scale=args.guidance,
                              eta=args.eta, generator=gens, output_type="pt").images)
        return torch.cat(parts)

    sides = {"ours (sample_trajectories)": ours, "plain (pipe(...))": plain}

    def timed(fn):
        C.synchronize(device)
        t0 = time.perf_counter()
        images = fn()
        C.synchronize(device)
        return time.perf_counter() - t0, images

    print(f"{args.images} images x {args.steps} DDIM steps, guidance {args.guidance}, eta {args.eta}, batch {chunk}; "
          f"{C.environment_line(str(device))}; model {args.model}", flush=True)
    images = {}
    for _ in range(args.warmup):
        for name, fn in sides.items():
            timed(fn)
    times: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    for r in range(args.repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            sec, images[name] = timed(sides[name])
            times[name].append(sec)
        print(f"  repeat {r + 1}/{args.repeats}: " + ", ".join(f"{n.split()[0]} {times[n][-1]:.3f} s" for n in names),
              flush=True)

    a, b = (images[n].float().cpu() for n in names)
    if a.shape != b.shape:
        raise SystemExit(f"image shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    rows = [[n, f"{C.median(t):.3f}", f"{min(t):.3f}..{max(t):.3f}", f"{C.median(t) / args.images * 1000:.1f}"]
            for n, t in times.items()]
    print()
    print(C.table(rows, ["side", "median s", "min..max", "ms/image"]))
    ratio = C.median(times[names[0]]) / C.median(times[names[1]])
    print(f"\nratio ours/plain: {ratio:.3f}  (target <= 1.15: {'met' if ratio <= 1.15 else 'NOT met'}) "
          f"over {args.repeats} interleaved repeats")
    print(f"images agree: max |ours - plain| = {(a - b).abs().max().item():.2e} "
          f"(mean {(a - b).abs().mean().item():.2e}; pixel values in [0, 1])")


if __name__ == "__main__":
    main()
