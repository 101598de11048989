"""The compute floor of one DDPO epoch: the bare UNet and VAE calls that the math of an epoch requires.

    python benchmarks/compute_floor.py --threads 2                        # toy model, 5 repeats
    python benchmarks/compute_floor.py --threads 2 --trl-seconds 11.53    # also: what 0.5x TRL would need

Why. Any implementation of one DDPO epoch at given settings (fp32, same samples, steps, guidance, train batch,
timestep fraction) must run at least these network calls:

* sampling: ``steps`` UNet forwards per image, each on the guided pair (unconditional + conditional), and one
  VAE decode per image;
* the PPO pass: for each image, ``round(steps * timestep_fraction)`` (sample, timestep) pairs, each a guided
  UNet forward *with* autograd and its backward to the trainable weights (LoRA r=4 here).

This script times exactly those calls on random inputs of the right shapes (the cost of a UNet call does not
depend on the values), in the batch shapes ddpo-study uses (``--sample-batch`` images per sampling call;
``--train-batch`` images x all their trained steps per PPO call), with nothing else: no scheduler, no log-probs,
no reward, no optimizer step. It interleaves that with ddpo-study's real epoch (``_common.OurEpoch``) and prints
medians and ``ours / floor``. Where that ratio is near 1, the epoch is compute-bound: no implementation of the
same math can be much faster on this machine, whatever its bookkeeping; only less arithmetic (lower precision,
fewer steps or samples) or more hardware helps. With ``--trl-seconds`` (TRL's median epoch from ``vs_trl.py``
on the same machine and settings) it also prints ``floor / TRL``: the best ratio any implementation could
reach against TRL.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


class Floor:
    """The epoch's UNet/VAE calls on random tensors, shaped as in ddpo-study's sampler and PPO pass."""

    def __init__(self, epoch: C.OurEpoch):
        import torch

        self.torch = torch
        self.s = epoch.cfg
        self.unet, self.vae, self.device = epoch.unet, epoch.pipe.vae, epoch.device
        cfgu = self.unet.config
        size = cfgu.sample_size if isinstance(cfgu.sample_size, int) else cfgu.sample_size[0]
        self.latent_shape = (cfgu.in_channels, size, size)
        with torch.inference_mode():
            ids = epoch.pipe.tokenizer(["a photo"], padding="max_length", truncation=True, return_tensors="pt",
                                       max_length=epoch.pipe.tokenizer.model_max_length).input_ids.to(self.device)
            self.text = epoch.pipe.text_encoder(ids)[0].clone()  # (1, L, D); broadcast to any batch below
        self.trainable = [p for p in self.unet.parameters() if p.requires_grad]

    def _cond(self, n: int):
        return self.text.expand(n, -1, -1)

    def sample(self) -> float:
        torch, cfg = self.torch, self.s
        t0 = time.perf_counter()
        with torch.inference_mode():
            for _ in range(cfg.samples_per_epoch // cfg.sample_batch_size):
                b = cfg.sample_batch_size
                x = torch.randn(2 * b, *self.latent_shape, device=self.device)
                for t in range(cfg.num_steps):
                    self.unet(x, torch.full((2 * b,), 999 - 50 * t, device=self.device), self._cond(2 * b))
                self.vae.decode(x[:b] / self.vae.config.scaling_factor)
        C.synchronize(self.device)
        return time.perf_counter() - t0

    def train(self) -> float:
        torch, cfg = self.torch, self.s
        k = max(1, round(cfg.num_steps * cfg.timestep_fraction))
        t0 = time.perf_counter()
        for _ in range(cfg.inner_epochs * (cfg.samples_per_epoch // cfg.train_batch_size)):
            n = 2 * cfg.train_batch_size * k  # guided pairs of every (image, trained step) of the minibatch
            x = torch.randn(n, *self.latent_shape, device=self.device)
            t = torch.randint(0, 1000, (n,), device=self.device)
            out = self.unet(x, t, self._cond(n)).sample
            grads = torch.autograd.grad(out.float().square().mean(), self.trainable)
            del out, grads
        C.synchronize(self.device)
        return time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    C.add_epoch_args(ap)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--trl-seconds", type=float, default=None, help="TRL's median epoch (vs_trl.py), same machine")
    args = ap.parse_args(argv)
    s = C.epoch_settings(args)
    C.check_settings(s)
    C.quiet()
    C.setup_threads(s["threads"])
    ours = C.OurEpoch(s)
    floor = Floor(ours)
    rows = []
    for r in range(args.warmup + args.repeats):
        # alternate the order so both see the same machine state on average
        if r % 2:
            fs, ft, e = floor.sample(), floor.train(), ours.run()
        else:
            e = ours.run()
            fs, ft = floor.sample(), floor.train()
        if r >= args.warmup:
            rows.append((fs, ft, e["sample_s"], e["train_s"], e["seconds"]))
        print(f"repeat {r}{' (warm-up)' if r < args.warmup else ''}: floor {fs + ft:.2f} s, ours {e['seconds']:.2f} s",
              flush=True)
    med = [statistics.median(col) for col in zip(*rows)]
    fs, ft, os_, ot, oe = med
    print(C.environment_line(str(ours.device)))
    print(C.table([["sampling (UNet + VAE)", f"{fs:.2f}", f"{os_:.2f}", f"{os_ / fs:.2f}x"],
                   ["PPO pass (UNet fwd + bwd)", f"{ft:.2f}", f"{ot:.2f}", f"{ot / ft:.2f}x"],
                   ["epoch", f"{fs + ft:.2f}", f"{oe:.2f}", f"{oe / (fs + ft):.2f}x"]],
                  ["part (medians, s)", "floor", "ddpo-study", "ours / floor"]))
    if args.trl_seconds:
        print(f"floor / TRL = {(fs + ft) / args.trl_seconds:.2f} (the best any implementation of this math could "
              f"reach here); ours / TRL = {oe / args.trl_seconds:.2f}; 0.5x TRL = {args.trl_seconds / 2:.2f} s")


if __name__ == "__main__":
    main()
