"""SD3 without T5: T5's share of the context is identical zero tokens; compute them once.

A ``StableDiffusion3Pipeline`` loaded with ``text_encoder_3=None`` (diffusers' documented way to drop T5, and the
flow toy's layout) still appends T5's share of the context as zeros: ``max_sequence_length`` tokens (256 by default
in the pipeline call) after the CLIP tokens. SD3's text stream has no positional embedding, so those zero tokens
stay identical to each other in every block (each block's text-side norms, MLPs and attention queries act per
token), and softmax attention over n identical keys equals attention over one of them with its logit raised by
log n. So a context of the CLIP tokens plus **one** zero token (the pipeline's ``max_sequence_length=1``), with
that token's key weighted by ``log 256``, computes what the stock call computes, at a fraction of the cost: on the
flow toy (16 CLIP tokens, 64 image tokens) 81 tokens instead of 336, and a guided call in 0.18x the time on one CPU
thread (``results/benchmarks/sd3_context.txt``, ``benchmarks/sd3_context.py``).

:class:`CollapsedPadJointAttnProcessor` does the weighting. Installed by :func:`collapse_t5_padding` it applies
only to a context of exactly ``text_tokens`` = CLIP tokens + 1; any other context (a stock call's 16 + 256, a call
with another ``max_sequence_length``) goes to the processor it replaced, unchanged, so the pipeline stays a stock
pipeline for every caller that does not ask for the short context. Our samplers ask with
:func:`short_context_kwargs`. The pretraining of the flow toy trained on this context (``toy/pretrain_flow.py``).
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from diffusers import StableDiffusion3Pipeline

#: The zero tokens a stock call appends for the missing T5 (the pipeline's ``max_sequence_length`` default).
T5_PAD_TOKENS = inspect.signature(StableDiffusion3Pipeline.__call__).parameters["max_sequence_length"].default


class CollapsedPadJointAttnProcessor:
    """SD3's joint attention where the last text token stands for ``pad_repeats`` identical copies of itself.

    Same projections and output as diffusers' ``JointAttnProcessor2_0``; the only change is a logit bias of
    ``log(pad_repeats)`` on that token's key, which is what ``pad_repeats`` identical keys contribute to every
    softmax. ``text_tokens``: apply it only to contexts of exactly that many tokens and hand any other to
    ``fallback`` (None: apply it to every context, as pretraining does).
    """

    def __init__(self, pad_repeats: int = T5_PAD_TOKENS, text_tokens: int | None = None, fallback=None):
        if pad_repeats < 1:
            raise ValueError(f"pad_repeats must be at least 1, got {pad_repeats}")
        if text_tokens is not None and fallback is None:
            raise ValueError("a processor restricted to text_tokens needs the fallback processor for other contexts")
        self.pad_repeats, self.text_tokens, self.fallback = pad_repeats, text_tokens, fallback

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        if encoder_hidden_states is None:
            raise ValueError("CollapsedPadJointAttnProcessor is for SD3's joint attention (it needs the text tokens)")
        if self.text_tokens is not None and encoder_hidden_states.shape[1] != self.text_tokens:
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
        batch, n_image = hidden_states.shape[:2]

        def heads(x):
            return x.view(batch, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

        query, key, value = (heads(f(hidden_states)) for f in (attn.to_q, attn.to_k, attn.to_v))
        c_query, c_key, c_value = (heads(f(encoder_hidden_states))
                                   for f in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
        if attn.norm_q is not None:
            query, key = attn.norm_q(query), attn.norm_k(key)
        if attn.norm_added_q is not None:
            c_query, c_key = attn.norm_added_q(c_query), attn.norm_added_k(c_key)
        query, key, value = (torch.cat(pair, dim=2) for pair in ((query, c_query), (key, c_key), (value, c_value)))
        bias = torch.zeros(1, key.shape[2], dtype=query.dtype, device=query.device)  # broadcast over queries
        bias[0, -1] = math.log(self.pad_repeats)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * query.shape[-1]).to(query.dtype)
        image, text = out[:, :n_image], out[:, n_image:]
        if not attn.context_pre_only:
            text = attn.to_add_out(text)
        return attn.to_out[1](attn.to_out[0](image)), text


def use_collapsed_t5_padding(transformer, pad_repeats: int = T5_PAD_TOKENS):
    """Give every attention layer of ``transformer`` the collapsed-padding processor for every context (pretraining,
    which only ever feeds the short one); returns the transformer."""
    transformer.set_attn_processor(CollapsedPadJointAttnProcessor(pad_repeats))
    return transformer


def clip_tokens(pipe) -> int:
    """The CLIP tokens of an SD3 pipeline's context (the pipeline pads both CLIP encodings to this length)."""
    return int(pipe.tokenizer.model_max_length)


def collapse_t5_padding(pipe) -> bool:
    """Let ``pipe`` (an SD3 pipeline) run the short context when asked; True if it has no T5 and so can.

    Each attention layer's processor is wrapped: contexts of CLIP tokens + 1 get the weighted zero token, all others
    the layer's own processor. Idempotent; a pipeline with T5 is left alone (its T5 tokens differ from each other).
    """
    transformer = getattr(pipe, "transformer", None)
    if transformer is None or getattr(pipe, "text_encoder_3", None) is not None:
        return False
    if is_collapsed(pipe):
        return True
    n = clip_tokens(pipe) + 1
    transformer.set_attn_processor({
        name: CollapsedPadJointAttnProcessor(T5_PAD_TOKENS, text_tokens=n, fallback=proc)
        for name, proc in transformer.attn_processors.items()
    })
    return True


def runs_short_context(transformer) -> bool:
    """Every attention layer of ``transformer`` has the restricted collapsed-padding processor."""
    procs = getattr(transformer, "attn_processors", None) or {}
    return bool(procs) and all(isinstance(p, CollapsedPadJointAttnProcessor) and p.text_tokens is not None
                               for p in procs.values())


def is_collapsed(pipe) -> bool:
    """The pipeline's current transformer can run the short context (:func:`collapse_t5_padding`)."""
    return runs_short_context(getattr(pipe, "transformer", None))


def short_context_kwargs(pipe, *transformers) -> dict:
    """``{"max_sequence_length": 1}`` for a pipeline :func:`collapse_t5_padding` prepared, else ``{}``: pass it to
    ``pipe(...)`` or ``pipe.encode_prompt(...)`` for the same result at the short context's cost. A call that
    swaps transformers mid-way names them all: the short context only if every one of them can run it."""
    ok = is_collapsed(pipe) and all(runs_short_context(t) for t in transformers)
    return {"max_sequence_length": 1} if ok else {}
