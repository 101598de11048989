"""A word-level CLIP-style tokenizer for the toy world.

The toy grammar has a few dozen words, so a word-level vocabulary is exact and tiny. It is built with the
`tokenizers` library and wrapped as a `PreTrainedTokenizerFast`, which is what `StableDiffusionPipeline`
calls with ``padding="max_length", max_length=tokenizer.model_max_length`` exactly as it calls CLIP's BPE
tokenizer. Like CLIP, every sequence is ``<|startoftext|> words... <|endoftext|>`` then padding; the
text encoder pools at the end-of-text token, so its id must be written into the encoder config.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD, UNK = "<|startoftext|>", "<|endoftext|>", "<|pad|>", "<|unk|>"
# EOS must not get id 2: CLIP's text model treats ``eos_token_id == 2`` as the legacy "pool at argmax(id)" case.
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)

#: The default context length: the longest toy caption has 12 words, plus BOS and EOS.
DEFAULT_MAX_LENGTH = 16


def build_tokenizer(words: list[str], max_length: int = DEFAULT_MAX_LENGTH) -> PreTrainedTokenizerFast:
    """A lower-casing, whitespace/punctuation-splitting word tokenizer over ``words`` (order kept, duplicates dropped)."""
    vocab: dict[str, int] = {}
    for token in (*SPECIAL_TOKENS, *words):
        vocab.setdefault(token, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("removed")])
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=max_length,
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, path: str | Path) -> None:
    """Save ``tokenizer`` under ``path`` and record it as ``PreTrainedTokenizerFast``.

    transformers 5 records tokenizers built this way as ``TokenizersBackend``, a class older releases do not
    know; ``PreTrainedTokenizerFast`` loads in both.
    """
    path = Path(path)
    tokenizer.save_pretrained(path)
    cfg_path = path / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg.pop("backend", None)
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
