"""Pretrain the toy world's models and save them as a genuine diffusers ``StableDiffusionPipeline``.

    python -m ddpo_study.toy.pretrain [--out data/toy-model] [--seed 0] [--device auto] [--scale 1.0]

Four stages, each on freshly rendered data (the world is infinite, so nothing overfits a fixed set):

1. **CLIP** (``transformers.CLIPModel``, ViT on 4x4 patches + a word-level text transformer) trained
   contrastively on (render, caption) pairs. Each batch also carries a *hard-negative twin* caption per
   image that differs in exactly one attribute (60% of the time the shape), because shape is the attribute a
   contrastive model otherwise learns last.
2. **VAE** (``AutoencoderKL``, 2x downsampling: 32x32x3 images <-> 16x16x4 latents), L1 + MSE
   reconstruction with a tiny KL term, as Stable Diffusion's VAE; ``scaling_factor`` is set afterwards to
   1/std of the latents so the diffusion model sees unit-variance inputs (SD's 0.18215 has the same role).
3. **UNet** (``UNet2DConditionModel``) with epsilon prediction on SD's noise schedule, conditioned on the
   *frozen* CLIP text encoder's last hidden states, with 10% caption dropout (empty prompt) so that
   classifier-free guidance works, and an exponential moving average of the weights (the EMA is saved).
4. **Aesthetic scorer**: an MLP on the CLIP image embedding regressing :func:`~ddpo_study.toy.taste.taste`.

Then the pipeline (``model_index.json``, safetensors, a ``DDIMScheduler``) goes to ``--out`` with the full
CLIP under ``clip/`` and the scorer under ``aesthetic/``, and the quality report (CLIP zero-shot accuracy,
VAE error, scorer fit) to ``--out/pretrain_report.json``. The base model's prompt-following and diversity
are measured separately by ``python -m ddpo_study.toy.evaluate`` (the judge needs sampling).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import world
from .taste import taste
from .tokenizer import build_tokenizer, save_tokenizer

RESOLUTION = 32

#: Steps per stage at --scale 1 (sized to finish in about 90 minutes on 2 CPU cores).
STEPS = {"clip": 3000, "vae": 800, "unet": 3500, "aesthetic": 600}
BATCH = {"clip": 128, "vae": 64, "unet": 128, "aesthetic": 256}


# ----------------------------------------------------------------------------------------- model configs
def make_clip(tokenizer):
    from transformers import CLIPConfig, CLIPModel

    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    vision = dict(
        image_size=RESOLUTION,
        patch_size=4,
        num_channels=3,
        hidden_size=96,
        intermediate_size=384,
        num_hidden_layers=3,
        num_attention_heads=4,
    )
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=64))


def make_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=4,
        mid_block_add_attention=False,
        norm_num_groups=8,
        sample_size=RESOLUTION,
    )


def make_unet(cross_attention_dim: int):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=RESOLUTION // 2,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def make_scheduler_configs():
    """Stable Diffusion v1's noise schedule: DDPM for training, DDIM (saved in the pipeline) for sampling."""
    from diffusers import DDIMScheduler, DDPMScheduler

    common = dict(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, prediction_type="epsilon", steps_offset=1,
    )
    return DDPMScheduler(**common), DDIMScheduler(**common, set_alpha_to_one=False)


# ----------------------------------------------------------------------------------------- helpers
def _images_for_clip(images: torch.Tensor) -> torch.Tensor:
    """[0,1] images -> the [-1,1] pixel values the toy CLIP is trained and used with (no resize, no CLIP stats)."""
    return images * 2 - 1


def _twin(attrs: world.Attributes, g: torch.Generator) -> world.Attributes:
    """A copy of ``attrs`` with exactly one attribute changed per row (the shape 60% of the time).

    A change that would make the shape's colour equal the background is redrawn.
    """
    n_vals = {"shape": len(world.SHAPES), "size": len(world.SIZES), "position": len(world.POSITIONS),
              "color": len(world.COLORS), "bg": len(world.BACKGROUNDS)}
    fields = list(n_vals)
    # field choice: shape with p=0.6 (the attribute contrastive training learns last), each other with p=0.1
    probs = torch.tensor([0.6, 0.1, 0.1, 0.1, 0.1])
    out = {f: getattr(attrs, f).clone() for f in fields}
    todo = torch.ones(len(attrs), dtype=torch.bool)
    bg_of_color = torch.tensor([world.BACKGROUNDS.index(c) if c in world.BACKGROUNDS else -1 for c in world.COLORS])
    while todo.any():
        idx = todo.nonzero()[:, 0]
        which = torch.multinomial(probs, len(idx), replacement=True, generator=g)
        new = {f: getattr(attrs, f)[idx].clone() for f in fields}
        for k, f in enumerate(fields):
            rows = which == k
            shift = 1 + (torch.rand(int(rows.sum()), generator=g) * (n_vals[f] - 1)).long()
            new[f][rows] = (new[f][rows] + shift) % n_vals[f]
        ok = bg_of_color[new["color"]] != new["bg"]
        for f in fields:
            out[f][idx[ok]] = new[f][ok]
        todo[idx[ok]] = False
    return world.Attributes(**out)


def _pooled(out):
    """transformers 5 returns an output object from get_*_features, 4.x a tensor."""
    return getattr(out, "pooler_output", out)


def _tokens(tokenizer, prompts, device):
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids.to(device)


def _lr(step: int, total: int, peak: float, warmup: int = 200) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _set_lr(opt, lr):
    for group in opt.param_groups:
        group["lr"] = lr


# ----------------------------------------------------------------------------------------- stages
def train_clip(clip, tokenizer, steps, batch, device, g):
    clip.train()
    opt = torch.optim.AdamW(clip.parameters(), lr=1e-3, weight_decay=0.05)
    for step in (bar := tqdm(range(steps), desc="1/4 clip")):
        _set_lr(opt, _lr(step, steps, 1e-3))
        attrs = world.random_attributes(batch, g)
        images = world.render(attrs, RESOLUTION, g).to(device)
        captions = world.caption(attrs)
        twins = world.caption(_twin(attrs, g))
        ids = _tokens(tokenizer, captions + twins, device)
        img = F.normalize(_pooled(clip.get_image_features(pixel_values=_images_for_clip(images))), dim=-1)
        txt = F.normalize(_pooled(clip.get_text_features(input_ids=ids)), dim=-1)
        scale = clip.logit_scale.exp().clamp(max=100)
        logits = scale * img @ txt.T  # (B, 2B): real captions then twins
        # Another image of the batch may share a caption: such a text is not a negative.
        code = attrs.shape * 10000 + attrs.size * 1000 + attrs.position * 100 + attrs.color * 10 + attrs.bg
        same = (code[:, None] == code[None, :]).to(device)
        same.fill_diagonal_(False)
        real = logits[:, :batch].masked_fill(same, float("-inf"))
        target = torch.arange(batch, device=device)
        loss_i2t = F.cross_entropy(torch.cat([real, logits[:, batch:]], dim=1), target)
        loss_t2i = F.cross_entropy(real.T, target)
        loss = 0.5 * (loss_i2t + loss_t2i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return clip.eval()


@torch.no_grad()
def clip_zero_shot(clip, tokenizer, n, device, g) -> dict[str, float]:
    """Per attribute: among captions that differ from the truth in that attribute only, is the truth ranked first?"""
    attrs = world.random_attributes(n, g)
    images = world.render(attrs, RESOLUTION, g).to(device)
    img = F.normalize(_pooled(clip.get_image_features(pixel_values=_images_for_clip(images))), dim=-1)
    n_vals = {"shape": len(world.SHAPES), "size": len(world.SIZES), "position": len(world.POSITIONS),
              "color": len(world.COLORS), "bg": len(world.BACKGROUNDS)}
    out = {}
    for field, k in n_vals.items():
        rows = attrs.as_dicts()
        scores = torch.full((n, k), float("-inf"), device=device)
        for v in range(k):
            cand = [dict(r, **{field: v}) for r in rows]
            valid = torch.tensor([world.COLORS[c["color"]] != world.BACKGROUNDS[c["bg"]] for c in cand], device=device)
            txt = F.normalize(_pooled(clip.get_text_features(
                input_ids=_tokens(tokenizer, [world.caption(c) for c in cand], device))), dim=-1)
            scores[:, v] = torch.where(valid, (img * txt).sum(-1), scores[:, v])
        truth = getattr(attrs, field).to(device)
        out[field] = (scores.argmax(1) == truth).float().mean().item()
    return out


def train_vae(vae, steps, batch, device, g):
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    for step in (bar := tqdm(range(steps), desc="2/4 vae")):
        _set_lr(opt, _lr(step, steps, 1e-3))
        x = world.render(world.random_attributes(batch, g), RESOLUTION, g).to(device) * 2 - 1
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g).to(device)
        rec = vae.decode(z).sample
        kl = post.kl().mean() / z[0].numel()
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    vae.eval()
    with torch.no_grad():
        x = world.render(world.random_attributes(512, g), RESOLUTION, g).to(device) * 2 - 1
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.mean).sample
        vae.register_to_config(scaling_factor=float(1.0 / post.mean.std()))
        return {"vae_rmse_0_255": float(((rec - x) / 2 * 255).pow(2).mean().sqrt()),
                "vae_scaling_factor": vae.config.scaling_factor}


def train_unet(unet, vae, text_encoder, tokenizer, noise_scheduler, steps, batch, device, g):
    """Epsilon-prediction DDPM training with caption dropout and an EMA of the weights (returned)."""
    all_captions = [world.caption(a) for a in world.all_attribute_combinations().as_dicts()]
    index = {c: i for i, c in enumerate(all_captions)}
    with torch.no_grad():  # the text encoder is frozen: embed the whole (finite) grammar once
        table = torch.cat([text_encoder(_tokens(tokenizer, all_captions[i:i + 512] , device))[0]
                           for i in range(0, len(all_captions), 512)])
        empty = text_encoder(_tokens(tokenizer, [""], device))[0]
    ema = copy.deepcopy(unet).requires_grad_(False)
    ema_params, unet_params = list(ema.parameters()), list(unet.parameters())
    unet.train()
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-3, weight_decay=0.01)
    alphas_cumprod = noise_scheduler.alphas_cumprod.to(device)
    sf = vae.config.scaling_factor
    for step in (bar := tqdm(range(steps), desc="3/4 unet")):
        _set_lr(opt, _lr(step, steps, 1e-3, warmup=300))
        attrs = world.random_attributes(batch, g)
        with torch.no_grad():
            x = world.render(attrs, RESOLUTION, g).to(device) * 2 - 1
            post = vae.encode(x).latent_dist
            z0 = (post.mean + post.std * torch.randn(post.mean.shape, generator=g).to(device)) * sf
        cond = table[torch.tensor([index[c] for c in world.caption(attrs)], device=device)]
        drop = (torch.rand(batch, generator=g) < 0.1).to(device)
        cond = torch.where(drop[:, None, None], empty.expand_as(cond), cond)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch,), generator=g).to(device)
        eps = torch.randn(z0.shape, generator=g).to(device)
        ab = alphas_cumprod[t].view(-1, 1, 1, 1)
        zt = ab.sqrt() * z0 + (1 - ab).sqrt() * eps
        loss = F.mse_loss(unet(zt, t, encoder_hidden_states=cond).sample, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, unet_params, 1 - decay)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    return ema.eval()


def train_aesthetic(scorer, clip, steps, batch, device, g):
    scorer.train()
    opt = torch.optim.AdamW(scorer.parameters(), lr=2e-3, weight_decay=1e-4)

    def batch_of(n):
        attrs = world.random_attributes(n, g)
        layout = world.sample_layout(attrs, g)
        images = world.render(attrs, RESOLUTION, g, layout=layout).to(device)
        with torch.no_grad():
            emb = _pooled(clip.get_image_features(pixel_values=_images_for_clip(images)))
        return emb, taste(attrs, layout).to(device)

    for step in (bar := tqdm(range(steps), desc="4/4 aesthetic")):
        _set_lr(opt, _lr(step, steps, 2e-3))
        emb, y = batch_of(batch)
        loss = F.mse_loss(scorer(emb), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    scorer.eval()
    with torch.no_grad():
        emb, y = batch_of(2048)
        pred = scorer(emb)
        r2 = 1 - ((pred - y) ** 2).mean() / y.var()
        return {"aesthetic_r2": float(r2), "aesthetic_rmse": float(((pred - y) ** 2).mean().sqrt())}


# ----------------------------------------------------------------------------------------- main
def build_pipeline(unet, vae, text_encoder, tokenizer, ddim):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=ddim,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def save_all(out: Path, pipe, clip, scorer, tokenizer, report) -> None:
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)
    save_tokenizer(tokenizer, out / "tokenizer")
    index_file = out / "model_index.json"
    index = json.loads(index_file.read_text())
    index["tokenizer"] = ["transformers", "PreTrainedTokenizerFast"]
    index_file.write_text(json.dumps(index, indent=2) + "\n")
    clip.save_pretrained(out / "clip", safe_serialization=True)
    save_tokenizer(tokenizer, out / "clip")
    scorer.save(out / "aesthetic")
    (out / "pretrain_report.json").write_text(json.dumps(report, indent=2) + "\n")


def main(argv=None) -> dict:
    from transformers import CLIPTextModel

    from ..aesthetic import AestheticMLP
    from ..models import resolve_device

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="data/toy-model", help="output folder (a diffusers pipeline)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="'auto' (cuda if available), 'cpu' or 'cuda'")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every stage's step count (tests use ~0.01)")
    args = ap.parse_args(argv)

    device = resolve_device(args.device)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)  # all world/noise draws on the CPU: device-independent data
    steps = {k: max(2, int(v * args.scale)) for k, v in STEPS.items()}
    report: dict = {"seed": args.seed, "device": str(device), "scale": args.scale, "steps": steps, "batch": BATCH,
                    "torch": torch.__version__, "seconds": {}}

    tokenizer = build_tokenizer(world.vocabulary())
    t0 = time.time()
    clip = train_clip(make_clip(tokenizer).to(device), tokenizer, steps["clip"], BATCH["clip"], device, g)
    report["seconds"]["clip"] = time.time() - t0
    report["clip_zero_shot"] = clip_zero_shot(clip, tokenizer, 1000, device, g)
    print("CLIP zero-shot attribute accuracy on fresh renders:", report["clip_zero_shot"])

    text_encoder = CLIPTextModel(clip.config.text_config)
    # transformers 5: CLIPTextModel has no `.text_model`; its state dict is CLIPModel.text_model's.
    text_encoder.load_state_dict(clip.text_model.state_dict())
    text_encoder = text_encoder.to(device).eval().requires_grad_(False)

    t0 = time.time()
    vae = make_vae().to(device)
    report.update(train_vae(vae, steps["vae"], BATCH["vae"], device, g))
    report["seconds"]["vae"] = time.time() - t0
    print(f"VAE: rmse {report['vae_rmse_0_255']:.2f}/255, scaling_factor {report['vae_scaling_factor']:.4f}")
    vae.requires_grad_(False)

    t0 = time.time()
    noise_scheduler, ddim = make_scheduler_configs()
    unet = make_unet(text_encoder.config.hidden_size).to(device)
    unet = train_unet(unet, vae, text_encoder, tokenizer, noise_scheduler, steps["unet"], BATCH["unet"], device, g)
    report["seconds"]["unet"] = time.time() - t0

    t0 = time.time()
    scorer = AestheticMLP(clip.config.projection_dim, hidden=(128, 64), activation="gelu").to(device)
    report.update(train_aesthetic(scorer, clip, steps["aesthetic"], BATCH["aesthetic"], device, g))
    report["seconds"]["aesthetic"] = time.time() - t0
    print(f"Aesthetic scorer: R^2 {report['aesthetic_r2']:.3f}, rmse {report['aesthetic_rmse']:.3f}")

    pipe = build_pipeline(unet.cpu(), vae.cpu(), text_encoder.cpu(), tokenizer, ddim)
    save_all(Path(args.out), pipe, clip.cpu(), scorer.cpu(), tokenizer, report)
    print(f"saved to {args.out}; seconds per stage: {report['seconds']}")
    return report


if __name__ == "__main__":
    main()
