"""An UNTRAINED pipeline with the toy model's exact architecture, for timing before the toy model exists.

    python benchmarks/make_toy_arch.py /tmp/toy-arch           # ~2 s; then --model /tmp/toy-arch

Speed and memory do not depend on the weights' values, so the benchmarks here give the toy model's numbers on
this folder (same UNet, VAE, text encoder, tokenizer, scheduler, CLIP and aesthetic-scorer shapes, built by the
same constructors as ``ddpo_study.toy.pretrain``), without the pretraining run. Its images are noise: use it for
time and memory only, never for rewards or learning.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="output folder")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch
    from transformers import CLIPTextModel

    from ddpo_study.aesthetic import AestheticMLP
    from ddpo_study.toy import pretrain, world
    from ddpo_study.toy.tokenizer import build_tokenizer

    torch.manual_seed(args.seed)
    tokenizer = build_tokenizer(world.vocabulary())
    clip = pretrain.make_clip(tokenizer)
    text_encoder = CLIPTextModel(clip.config.text_config)
    text_encoder.load_state_dict(clip.text_model.state_dict())
    _, ddim = pretrain.make_scheduler_configs()
    unet = pretrain.make_unet(text_encoder.config.hidden_size)
    pipe = pretrain.build_pipeline(unet, pretrain.make_vae(), text_encoder.eval(), tokenizer, ddim)
    scorer = AestheticMLP(clip.config.projection_dim, hidden=(128, 64), activation="gelu")
    pretrain.save_all(Path(args.out), pipe, clip, scorer, tokenizer, {"untrained_toy_architecture": True})
    n = sum(p.numel() for p in unet.parameters())
    print(f"saved an untrained toy-architecture pipeline to {args.out} (UNet {n:,} parameters)")


if __name__ == "__main__":
    main()
