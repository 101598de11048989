"""The flow-matching toy model: a stock diffusers ``StableDiffusion3Pipeline`` built from the UNet toy's parts.

Components, by the names ``StableDiffusion3Pipeline`` gives them:

* ``transformer``: a small ``SD3Transformer2DModel`` on the toy VAE's 16x16x4 latents, patch 2 (64 image tokens).
* ``text_encoder`` and ``text_encoder_2``: the same model twice, the toy's frozen CLIP text encoder as a
  ``CLIPTextModelWithProjection``. Its weights are ``data/toy-model/text_encoder``'s (the UNet toy's encoder);
  the projection is the full toy CLIP's ``text_projection`` (``data/toy-model/clip``), so the pooled embedding
  is exactly the text vector toy CLIP scores images against. SD3 concatenates the two encoders: the hidden
  states (their penultimate layer, as the pipeline takes them) give 64 + 64 = 128 features per token (the
  ``joint_attention_dim``, so the pipeline pads nothing) and the pooled embeddings 64 + 64 = 128.
* ``text_encoder_3 = tokenizer_3 = None``: no T5, diffusers' documented way to drop it.
* ``vae``: the toy VAE with a ``shift_factor`` and ``scaling_factor`` measured on fresh renders: SD3 latents
  are ``(z - shift_factor) * scaling_factor``.
* ``scheduler``: ``FlowMatchEulerDiscreteScheduler``.

Load it as diffusers documents for an SD3 without T5:
``StableDiffusion3Pipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None)`` (the two slots are
``null`` in ``model_index.json``, and SD3 does not count them optional, so they must be named).

The context. Without T5 the pipeline still appends T5's share of the context as 256 zero tokens; training here
(and our samplers) run the CLIP tokens plus one zero token weighted in attention, which computes the stock call
at a fraction of the cost (:mod:`ddpo_study.sd3_padding`).

The rectified-flow convention is the scheduler's: ``x_t = (1 - sigma) x0 + sigma noise`` (``scale_noise``),
``timestep = sigma * num_train_timesteps``, and the model predicts the velocity ``noise - x0``, which
``FlowMatchEulerDiscreteScheduler.step`` integrates as ``x + (sigma_next - sigma) * velocity``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import StableDiffusion3Pipeline

from . import world

RESOLUTION = 32
LATENT_SIZE = RESOLUTION // 2  # the toy VAE downsamples 2x
PATCH_SIZE = 2  # 64 image tokens: SD3's patch, and enough tokens for a shape of 3-7 latent pixels
ATTENTION_HEAD_DIM = 32  # the probes' head width; width is set by the head count
NUM_TRAIN_TIMESTEPS = 1000  # SD3's; the transformer sees timestep = sigma * 1000
SCHEDULER_SHIFT = 1.0  # SD3's 3.0 is for 128x128 latents; 16x16 latents lose their signal at lower noise
#: Renders whose VAE latents fix ``shift_factor`` / ``scaling_factor`` (the UNet toy measured its factor on 512).
LATENT_STAT_RENDERS = 512


def make_transformer(num_layers: int, num_attention_heads: int, text_dim: int, pooled_dim: int):
    """An ``SD3Transformer2DModel`` for the toy latents, initialised adaLN-zero as DiT: every block starts as the
    identity and the output as zero, which makes a small transformer train faster and stably at a high rate."""
    from diffusers import SD3Transformer2DModel

    inner_dim = num_attention_heads * ATTENTION_HEAD_DIM
    transformer = SD3Transformer2DModel(
        sample_size=LATENT_SIZE,  # the pipeline's default height/width come from it: 16 * 2 = 32 px
        patch_size=PATCH_SIZE,
        in_channels=4,
        out_channels=4,
        num_layers=num_layers,
        attention_head_dim=ATTENTION_HEAD_DIM,
        num_attention_heads=num_attention_heads,
        joint_attention_dim=text_dim,  # the two CLIPs' hidden states side by side: nothing to pad
        caption_projection_dim=inner_dim,
        pooled_projection_dim=pooled_dim,
        pos_embed_max_size=LATENT_SIZE // PATCH_SIZE,  # one 8x8 grid of positions; no larger images
        qk_norm="rms_norm",  # SD3.5's choice: keeps attention logits bounded at a learning rate of 1e-3
    )
    with torch.no_grad():
        for block in transformer.transformer_blocks:
            for norm in (block.norm1, block.norm1_context):
                norm.linear.weight.zero_()
                norm.linear.bias.zero_()
        for layer in (transformer.norm_out.linear, transformer.proj_out):
            layer.weight.zero_()
            layer.bias.zero_()
    return transformer


def make_text_encoder(base: Path):
    """The toy text encoder with the toy CLIP's projection, as a frozen ``CLIPTextModelWithProjection``."""
    from transformers import CLIPModel, CLIPTextModel, CLIPTextModelWithProjection

    text_model = CLIPTextModel.from_pretrained(base / "text_encoder")
    clip = CLIPModel.from_pretrained(base / "clip")
    own, clips = text_model.state_dict(), clip.text_model.state_dict()
    if own.keys() != clips.keys() or any(not torch.equal(own[k], clips[k]) for k in own):
        raise ValueError(f"{base}: text_encoder/ is not clip/'s text tower, so clip's text_projection does not fit it")
    config = text_model.config
    config.projection_dim = clip.config.projection_dim
    config.architectures = ["CLIPTextModelWithProjection"]
    encoder = CLIPTextModelWithProjection(config)
    encoder.text_model.load_state_dict(own)
    encoder.text_projection.load_state_dict(clip.text_projection.state_dict())
    return encoder.eval().requires_grad_(False)


@torch.no_grad()
def latent_stats(vae, generator: torch.Generator, n: int = LATENT_STAT_RENDERS) -> tuple[float, float]:
    """(shift_factor, scaling_factor): the mean and 1/std of the VAE's latent means over ``n`` fresh renders."""
    x = world.render(world.random_attributes(n, generator), RESOLUTION, generator) * 2 - 1
    z = vae.encode(x).latent_dist.mean
    return float(z.mean()), float(1.0 / z.std())


def make_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=SCHEDULER_SHIFT)


def assemble_pipeline(transformer, vae, text_encoder, tokenizer, scheduler):
    """The stock pipeline: the one text encoder (and tokenizer) in both CLIP slots, no T5."""
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=scheduler, vae=vae,
        text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder, tokenizer_2=tokenizer,
        text_encoder_3=None, tokenizer_3=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def encode_prompts(pipe, prompts: list[str], chunk: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt_embeds, pooled_prompt_embeds) by the pipeline's own ``encode_prompt`` with one T5 zero token:
    (N, 16 + 1, 128) and (N, 128), the context :class:`~ddpo_study.sd3_padding.CollapsedPadJointAttnProcessor` expects."""
    embeds, pooled = [], []
    for i in range(0, len(prompts), chunk):
        e, _, p, _ = pipe.encode_prompt(prompts[i:i + chunk], None, None, do_classifier_free_guidance=False,
                                        max_sequence_length=1)
        embeds.append(e)
        pooled.append(p)
    return torch.cat(embeds), torch.cat(pooled)


# ----------------------------------------------------------------------------------------- rectified flow
def logit_normal_sigmas(n: int, generator: torch.Generator) -> torch.Tensor:
    """SD3's training noise levels: sigmoid of a standard normal (most weight on mid noise, none at the ends)."""
    return torch.sigmoid(torch.randn(n, generator=generator))


def noisy_latents(x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """x_t on the straight path, as ``FlowMatchEulerDiscreteScheduler.scale_noise`` draws it."""
    s = sigmas.view(-1, *([1] * (x0.dim() - 1)))
    return (1 - s) * x0 + s * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """d x_t / d sigma: what the transformer predicts and the Euler scheduler integrates."""
    return noise - x0
