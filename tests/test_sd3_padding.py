"""The short SD3 context (CLIP tokens + one weighted zero token) against the stock call it replaces."""

from __future__ import annotations

import pytest
import torch

from ddpo_study import flow_sampler, models, sd3_padding

PROMPTS = ["a red circle", "a blue square on the left"]


def _images(pipe, **kwargs):
    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    return pipe(prompt=PROMPTS, num_inference_steps=3, guidance_scale=4.0, generator=gens, output_type="pt",
                return_dict=False, **kwargs)[0]


def test_loaded_sd3_without_t5_runs_the_short_context_and_stays_stock_otherwise(tiny_sd3_model_dir, one_thread):
    from diffusers import StableDiffusion3Pipeline

    pipe = models.load_pipeline(str(tiny_sd3_model_dir))
    assert sd3_padding.is_collapsed(pipe)
    assert sd3_padding.short_context_kwargs(pipe) == {"max_sequence_length": 1}
    stock = StableDiffusion3Pipeline.from_pretrained(tiny_sd3_model_dir, text_encoder_3=None, tokenizer_3=None,
                                                     local_files_only=True)
    stock.set_progress_bar_config(disable=True)
    assert not sd3_padding.is_collapsed(stock) and sd3_padding.short_context_kwargs(stock) == {}
    with torch.inference_mode():
        want = _images(stock)
        # a stock call (256 zero tokens) goes to the replaced processor: bit for bit the stock pipeline's
        assert torch.equal(_images(pipe), want)
        short = _images(pipe, max_sequence_length=1)
        # the short context computes the same images (float32 rounding of 1 weighted key vs 256 equal ones)
        torch.testing.assert_close(short, want, atol=1e-5, rtol=0)
        # and the weight is what makes it so: the short context on the stock processors differs
        assert (_images(stock, max_sequence_length=1) - want).abs().max() > 1e-3


def test_flow_sampler_encodes_the_short_context(tiny_sd3_model_dir):
    pipe = models.load_pipeline(str(tiny_sd3_model_dir))
    embeds, pooled = flow_sampler.encode_sd3_prompts(pipe, PROMPTS)
    assert embeds.shape[1] == sd3_padding.clip_tokens(pipe) + 1 and pooled.shape[0] == 2


def test_collapse_leaves_pipelines_with_t5_and_is_idempotent(tiny_sd3_model_dir):
    pipe = models.load_pipeline(str(tiny_sd3_model_dir))
    procs = pipe.transformer.attn_processors
    assert sd3_padding.collapse_t5_padding(pipe)  # again: nothing changes
    assert all(a is b for a, b in zip(procs.values(), pipe.transformer.attn_processors.values()))

    class WithT5:
        transformer, text_encoder_3 = pipe.transformer, object()

    assert not sd3_padding.collapse_t5_padding(WithT5())
    with pytest.raises(ValueError, match="fallback"):
        sd3_padding.CollapsedPadJointAttnProcessor(256, text_tokens=17)
