"""The short SD3 context (``ddpo_study.sd3_padding``) against the stock one: time and agreement of one guided call.

    python benchmarks/sd3_context.py [--model data/toy-flow] [--batch 64] [--repeats 7] [--threads 1]

A pipeline without T5 attends over its CLIP tokens plus 256 zero tokens in a stock call; the short context is the
CLIP tokens plus one zero token weighted by log 256. Both sides run the same guided transformer call (``2 x batch``
latents at a mid timestep, the prompts of toy_30) alternately, ``--repeats`` times after one warm-up each, in one
process; the script prints each side's median seconds, the ratio short/stock and the largest difference of the
velocities. Not a test.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import environment_line, quiet, repo_path, setup_threads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="data/toy-flow", help="an SD3 pipeline folder without T5")
    ap.add_argument("--batch", type=int, default=64, help="latents per call (guided: twice that many)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    quiet()
    setup_threads(args.threads)
    from ddpo_study import models, prompts, sd3_padding
    from ddpo_study.flow_sampler import guided_velocity

    pipe = models.load_pipeline(repo_path(args.model))
    if not sd3_padding.is_collapsed(pipe):
        raise SystemExit(f"error: {args.model} has a T5 encoder: its context has no zero padding to collapse")
    texts = (prompts.load_prompts("toy_30") * args.batch)[:args.batch]
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(args.batch, pipe.transformer.config.in_channels, pipe.transformer.config.sample_size,
                          pipe.transformer.config.sample_size, generator=g)
    timestep = torch.tensor(500.0)

    def context(kwargs):
        e, n, p, np_ = pipe.encode_prompt(texts, None, None, do_classifier_free_guidance=True,
                                          negative_prompt=[""] * len(texts), **kwargs)
        return e, p, n, np_

    sides = {"stock": context({}), "short": context({"max_sequence_length": 1})}
    seconds, out = {k: [] for k in sides}, {}
    with torch.inference_mode():
        for k, (e, p, n, np_) in sides.items():  # warm-up
            out[k] = guided_velocity(pipe.transformer, latents, timestep, e, p, n, np_, 5.0)
        for _ in range(args.repeats):
            for k, (e, p, n, np_) in sides.items():
                t0 = time.perf_counter()
                guided_velocity(pipe.transformer, latents, timestep, e, p, n, np_, 5.0)
                seconds[k].append(time.perf_counter() - t0)
    print(environment_line("cpu"))
    print(f"model {args.model}, {2 * args.batch} latents per call (guided), {args.threads} thread(s), "
          f"text tokens: stock {sides['stock'][0].shape[1]}, short {sides['short'][0].shape[1]}")
    for k in sides:
        print(f"{k:>5}: median {statistics.median(seconds[k]):.3f} s over {args.repeats} calls "
              f"(min {min(seconds[k]):.3f}, max {max(seconds[k]):.3f})")
    diff = (out["short"] - out["stock"]).abs().max().item()
    print(f"velocity max abs difference short vs stock: {diff:.2e} (scale {out['stock'].abs().max().item():.2f})")
    print(f"short/stock time ratio: {statistics.median(seconds['short']) / statistics.median(seconds['stock']):.3f}")


if __name__ == "__main__":
    main()
