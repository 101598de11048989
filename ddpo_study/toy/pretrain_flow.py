"""Pretrain the flow-matching toy and save it as a genuine diffusers ``StableDiffusion3Pipeline``.

    python -m ddpo_study.toy.pretrain_flow [--out data/toy-flow] [--seed 0] [--steps N] [--threads 2]

The text encoder, VAE, tokenizer, CLIP and aesthetic scorer are the UNet toy's (``--base data/toy-model``,
assembled as :mod:`ddpo_study.toy.flow_model` describes); only the transformer is trained, as the UNet toy's
UNet was: freshly rendered images every batch, the frozen text encoder's embeddings of the whole (finite)
grammar computed once, 10% caption dropout (empty prompt) so classifier-free guidance works, and an
exponential moving average of the weights, which is what is saved (fp16 on disk; diffusers loads it as fp32).
The loss is rectified flow: logit-normal noise levels, ``x_t = (1 - sigma) x0 + sigma noise``, velocity
target ``noise - x0``.

Every ``--ckpt-every`` steps the whole training state (weights, EMA, AdamW, the data generator, the log) goes
to ``--ckpt`` (default ``<out>-ckpt`` beside ``--out``, ignored by git); the same command started again
resumes from it and gives the same weights as an uninterrupted run. At the end ``--out`` gets the pipeline,
``clip/`` and ``aesthetic/`` (the rewards need them), ``pretrain_report.json``, ``pretrain_log.txt`` and,
unless ``--no-eval``, ``base_eval.json`` from :mod:`ddpo_study.toy.evaluate` (stock pipeline, 20 steps,
guidance 1 and 5), and the checkpoint is deleted.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import sd3_padding
from . import flow_model, world
from .flow_model import RESOLUTION

#: Transformer steps for the 90-minute budget on 2 uncontended cores: a step (batch 128, 6 x 96 wide) measured
#: ~0.65 s with 2 threads beside light load (1.0 CPU-second on one thread), so ~81 minutes. On a busy machine it
#: is slower (6 s per step beside four other jobs); checkpoints make that a matter of patience.
STEPS = 7500
BATCH = 128  # the UNet toy's batch
LR = 1e-3  # peak AdamW rate: a 2 M-parameter adaLN-zero transformer with qk-norm is stable there
WARMUP = 300  # steps of linear warm-up before the cosine decay (the UNet toy's)
WEIGHT_DECAY = 0.01  # the UNet toy's
CAPTION_DROPOUT = 0.1  # share of the batch trained on the empty prompt, for classifier-free guidance
EMA_MAX_DECAY = 0.999  # half-life ~700 steps: averages the end of the cosine schedule (the UNet toy's)
NUM_LAYERS = 6  # depth to bind five attributes; 4 layers x 128 wide cost the same per step but fill 8.05 MB
NUM_ATTENTION_HEADS = 3  # x 32 = 96 wide: 1.98 M parameters, 4.0 MB in fp16, the folder 7.4 MB (limit 8)
CKPT_EVERY = 100  # a kill loses at most ~1 minute of training
LOG_EVERY = 50  # steps per line of pretrain_log.txt (the mean loss over them)
EVAL_GUIDANCE = ("1", "5")  # CFG-free (where DiffusionNFT starts) and the UNet toy's best CFG
BASE_PARTS = ("text_encoder", "clip", "vae", "tokenizer", "aesthetic")


def _lr(step: int, total: int) -> float:
    if step < WARMUP:
        return LR * (step + 1) / WARMUP
    return LR * 0.5 * (1 + math.cos(math.pi * (step - WARMUP) / max(1, total - WARMUP)))


def _fail(message: str):
    raise SystemExit(f"error: {message}")


# ----------------------------------------------------------------------------------------- checkpoints
def _tensors(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in module.state_dict().items()}


def save_checkpoint(folder: Path, transformer, ema, optimizer, generator, state: dict) -> None:
    """All of the training state, written beside ``folder`` and swapped in whole (a kill leaves old or new)."""
    from safetensors.torch import save_file

    from ..checkpoint import _swap_in, optimizer_to_tensors

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_tensors(transformer), str(tmp / "transformer.safetensors"))
    save_file(_tensors(ema), str(tmp / "ema.safetensors"))
    tensors, meta = optimizer_to_tensors(optimizer)
    save_file(tensors, str(tmp / "optimizer.safetensors"), metadata=meta)
    save_file({"state": generator.get_state()}, str(tmp / "generator.safetensors"))
    (tmp / "state.json").write_text(json.dumps(state) + "\n")
    _swap_in(tmp, folder)


def load_checkpoint(folder: Path, transformer, ema, optimizer, generator, config: dict) -> dict | None:
    """The saved state (its tensors loaded into the arguments), or None without a checkpoint."""
    from safetensors.torch import load_file

    from ..checkpoint import load_checkpoint_state, optimizer_from_tensors

    state = load_checkpoint_state(folder)
    if state is None:
        return None
    for key, value in config.items():
        if state["config"].get(key) != value:
            _fail(f"checkpoint {folder} is from another run ({key} {state['config'].get(key)!r}, here {value!r}); "
                  "pass another --ckpt or delete it")
    transformer.load_state_dict(load_file(str(folder / "transformer.safetensors")))
    ema.load_state_dict(load_file(str(folder / "ema.safetensors")))
    optimizer_from_tensors(optimizer, folder / "optimizer.safetensors")
    generator.set_state(load_file(str(folder / "generator.safetensors"))["state"])
    return state


# ----------------------------------------------------------------------------------------- the finished model
@torch.no_grad()
def judge_vae_reconstructions(vae) -> dict[str, float]:
    """The judge on VAE reconstructions of true renders of the eval prompts: what a perfect latent model reads."""
    from ..prompts import load_prompts
    from .judge import attribute_accuracy

    attrs = world.parse_many(load_prompts("toy_eval")).repeat_interleave(4)
    x = world.render(attrs, RESOLUTION, torch.Generator().manual_seed(0))
    rec = vae.decode(vae.encode(x * 2 - 1).latent_dist.mean).sample
    return attribute_accuracy((rec / 2 + 0.5).clamp(0, 1), attrs)


def save_pipeline(out: Path, pipe, ema, base: Path) -> None:
    """The stock-loadable folder (EMA transformer in fp16) plus the base's ``clip/`` and ``aesthetic/``."""
    from ..checkpoint import _swap_in
    from .tokenizer import save_tokenizer

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    final = flow_model.assemble_pipeline(copy.deepcopy(ema).to(torch.float16), pipe.vae, pipe.text_encoder,
                                         pipe.tokenizer, pipe.scheduler)
    final.save_pretrained(tmp, safe_serialization=True)
    index = json.loads((tmp / "model_index.json").read_text())
    for name in ("tokenizer", "tokenizer_2"):  # transformers 5 records the toy tokenizer under a newer class
        save_tokenizer(pipe.tokenizer, tmp / name)
        index[name] = ["transformers", "PreTrainedTokenizerFast"]
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    for part in ("clip", "aesthetic"):
        shutil.copytree(base / part, tmp / part)
    link_duplicates(tmp, base)
    _swap_in(tmp, out)


def link_duplicates(folder: Path, base: Path, min_bytes: int = 64 * 1024) -> list[str]:
    """Replace each large file of ``folder`` that is byte-identical to the base's file at the same relative path, or
    to an earlier file of ``folder``, by a relative symlink to it; returns the linked paths.

    The flow toy shares its CLIP scorer and VAE weights with the UNet toy, and holds one text encoder twice (SD3's
    two CLIP slots): ~2.8 MB of a repository that must stay small. Links are relative, so they hold in any clone
    beside ``base``, and every loader (``from_pretrained``, safetensors) follows them.
    """
    import filecmp
    import os

    linked, seen = [], []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
        if path.stat().st_size < min_bytes:
            continue
        twin = base / path.relative_to(folder)
        target = twin if twin.is_file() and filecmp.cmp(path, twin, shallow=False) else \
            next((q for q in seen if filecmp.cmp(path, q, shallow=False)), None)
        if target is None:
            seen.append(path)
            continue
        rel = os.path.relpath(target.resolve(), path.parent.resolve())
        path.unlink()
        path.symlink_to(rel)
        linked.append(str(path.relative_to(folder)))
    return linked


# ----------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="data/toy-flow", help="output folder (a diffusers SD3 pipeline)")
    ap.add_argument("--base", default="data/toy-model", help="the UNet toy whose text encoder, VAE, CLIP are used")
    ap.add_argument("--ckpt", default=None, help="resume checkpoints (default: <out>-ckpt beside --out)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--batch", type=int, default=BATCH)
    ap.add_argument("--layers", type=int, default=NUM_LAYERS)
    ap.add_argument("--heads", type=int, default=NUM_ATTENTION_HEADS, help=f"attention heads of width "
                    f"{flow_model.ATTENTION_HEAD_DIM}")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--ckpt-every", type=int, default=CKPT_EVERY)
    ap.add_argument("--no-eval", action="store_true", help="skip the base eval (base_eval.json)")
    ap.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)  # a kill, for the resume test
    args = ap.parse_args(argv)
    for name in ("steps", "batch", "layers", "heads", "threads", "ckpt_every"):
        if getattr(args, name) < 1:
            _fail(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    args.out, args.base = Path(args.out), Path(args.base)
    args.ckpt = Path(args.ckpt) if args.ckpt else args.out.with_name(args.out.name + "-ckpt")
    missing = [p for p in BASE_PARTS if not (args.base / p).is_dir()]
    if missing:
        _fail(f"--base {args.base} is not the UNet toy (python -m ddpo_study.toy.pretrain): it lacks {missing}")
    if args.out.resolve() == args.base.resolve():
        _fail("--out must differ from --base")
    return args


def main(argv=None) -> dict:
    import diffusers
    from diffusers import AutoencoderKL
    from transformers import PreTrainedTokenizerFast

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # the transformer's initial weights
    g = torch.Generator().manual_seed(args.seed)  # every data draw: renders, latents, dropout, noise levels, noise
    t_setup = time.time()

    tokenizer = PreTrainedTokenizerFast.from_pretrained(args.base / "tokenizer")
    text_encoder = flow_model.make_text_encoder(args.base)
    vae = AutoencoderKL.from_pretrained(args.base / "vae").eval().requires_grad_(False)
    shift, scale = flow_model.latent_stats(vae, g)
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    dim = 2 * text_encoder.config.hidden_size, 2 * text_encoder.config.projection_dim  # two CLIP slots
    transformer = flow_model.make_transformer(args.layers, args.heads, *dim)
    pipe = flow_model.assemble_pipeline(transformer, vae, text_encoder, tokenizer, flow_model.make_scheduler())
    captions = [world.caption(a) for a in world.all_attribute_combinations().as_dicts()] + [""]
    index = {c: i for i, c in enumerate(captions)}
    prompt_embeds, pooled_prompt_embeds = flow_model.encode_prompts(pipe, captions)
    sd3_padding.use_collapsed_t5_padding(transformer)  # 16 + 1 text tokens compute the stock 16 + 256

    ema = copy.deepcopy(transformer).requires_grad_(False)
    ema_params, params = list(ema.parameters()), list(transformer.parameters())
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)
    config = {"seed": args.seed, "steps": args.steps, "batch": args.batch, "layers": args.layers,
              "heads": args.heads, "base": str(args.base.resolve())}
    latest = args.ckpt / "latest"
    state = load_checkpoint(latest, transformer, ema, opt, g, config) or {
        "config": config, "step": 0, "seconds": 0.0, "log": [], "loss_sum": 0.0, "loss_count": 0, "resumed_at": []}
    if state["step"]:
        state["resumed_at"].append(state["step"])
    n_params = sum(p.numel() for p in params)
    print(f"transformer: {args.layers} layers x {args.heads} heads, {n_params:,} parameters; "
          f"shift_factor {shift:.4f}, scaling_factor {scale:.4f}; step {state['step']}/{args.steps}", flush=True)
    setup_seconds = time.time() - t_setup

    transformer.train()
    t0 = time.time() - state["seconds"]
    for step in range(state["step"], args.steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, args.steps)
        attrs = world.random_attributes(args.batch, g)
        with torch.no_grad():
            post = vae.encode(world.render(attrs, RESOLUTION, g) * 2 - 1).latent_dist
            x0 = (post.mean + post.std * torch.randn(post.mean.shape, generator=g) - shift) * scale
        rows = torch.tensor([index[c] for c in world.caption(attrs)])
        rows = torch.where(torch.rand(args.batch, generator=g) < CAPTION_DROPOUT, index[""], rows)
        sigmas = flow_model.logit_normal_sigmas(args.batch, g)
        noise = torch.randn(x0.shape, generator=g)
        pred = transformer(hidden_states=flow_model.noisy_latents(x0, noise, sigmas),
                           encoder_hidden_states=prompt_embeds[rows], pooled_projections=pooled_prompt_embeds[rows],
                           timestep=sigmas * flow_model.NUM_TRAIN_TIMESTEPS).sample
        loss = F.mse_loss(pred, flow_model.velocity_target(x0, noise))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - min(EMA_MAX_DECAY, (1 + step) / (10 + step)))
        state["loss_sum"] += loss.item()
        state["loss_count"] += 1
        done = step + 1
        if done % LOG_EVERY == 0 or done == args.steps:
            line = (f"step {done:>5}/{args.steps}  seconds {time.time() - t0:8.1f}  "
                    f"loss {state['loss_sum'] / state['loss_count']:.4f}  lr {_lr(step, args.steps):.2e}")
            print(line, flush=True)
            state["log"].append(line)
            state["loss_sum"], state["loss_count"] = 0.0, 0
        if done % args.ckpt_every == 0 and done < args.steps:
            state.update(step=done, seconds=time.time() - t0)
            save_checkpoint(latest, transformer, ema, opt, g, state)
        if args.stop_after is not None and done >= args.stop_after:
            return {"stopped_at": done}
    train_seconds = time.time() - t0

    ema.eval()
    save_pipeline(args.out, pipe, ema, args.base)
    report = {
        "seed": args.seed, "device": "cpu", "threads": args.threads, "torch": torch.__version__,
        "diffusers": diffusers.__version__, "steps": args.steps, "batch": args.batch, "lr": LR, "warmup": WARMUP,
        "weight_decay": WEIGHT_DECAY, "caption_dropout": CAPTION_DROPOUT, "ema_max_decay": EMA_MAX_DECAY,
        "loss": "rectified flow: velocity noise - x0 at x_t = (1 - sigma) x0 + sigma noise, logit-normal sigma",
        "transformer": {"num_layers": args.layers, "num_attention_heads": args.heads,
                        "attention_head_dim": flow_model.ATTENTION_HEAD_DIM, "patch_size": flow_model.PATCH_SIZE,
                        "parameters": n_params, "saved_dtype": "float16", "weights": "EMA"},
        "context": {"clip_tokens": tokenizer.model_max_length, "t5_zero_tokens_stock_call": sd3_padding.T5_PAD_TOKENS,
                    "trained_as": f"{tokenizer.model_max_length} + 1 tokens, the zero token's attention logit "
                                  f"+ log({sd3_padding.T5_PAD_TOKENS})"},
        "vae_shift_factor": shift, "vae_scaling_factor": scale,
        "judge_on_vae_reconstructions": judge_vae_reconstructions(vae),
        "seconds": {"setup": setup_seconds, "transformer": train_seconds, "per_step": train_seconds / args.steps},
        "final_loss_mean_last_log": float(state["log"][-1].split("loss ")[1].split()[0]),
        "resumed_at_steps": state["resumed_at"],
    }
    report["bytes_on_disk"] = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    (args.out / "pretrain_report.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "pretrain_log.txt").write_text("\n".join(state["log"]) + "\n")
    shutil.rmtree(args.ckpt, ignore_errors=True)
    print(f"saved to {args.out}: {report['bytes_on_disk'] / 1e6:.2f} MB, {train_seconds:.0f} s of training", flush=True)
    if not args.no_eval:
        from . import evaluate

        evaluate.main(["--model", str(args.out), "--guidance", *EVAL_GUIDANCE, "--out",
                       str(args.out / "base_eval.json")])
    return report


if __name__ == "__main__":
    main()
