"""A character-level Hugging Face tokenizer built locally (no download).

Every byte is one token (GPT-2's byte-to-unicode alphabet, so any Unicode text round-trips),
and the four reasoning tags are single tokens, so a stop on ``</step>`` is a stop on one id.

It is a byte-level BPE with *no merges*, built through ``Qwen2Tokenizer`` itself: transformers
5 ignores ``tokenizer_class`` for ``qwen2`` model folders and always rebuilds a
``Qwen2Tokenizer`` (byte-level pre-tokenizer) from the saved vocabulary. A WordLevel
character vocabulary lost its spaces and newlines that way; this one reloads to the very same
ids through ``AutoTokenizer`` in transformers and in vLLM.
"""

from __future__ import annotations

import os
from functools import cache

from tokenizers import AddedToken
from transformers import PreTrainedTokenizerBase
from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

EOS_TOKEN = "<|endoftext|>"
TAG_TOKENS = ("<step>", "</step>", "<answer>", "</answer>")


@cache
def byte_alphabet() -> tuple[str, ...]:
    """GPT-2's reversible byte -> printable-unicode map, as a tuple indexed by byte value."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes, extra = {}, 0
    for b in range(256):
        if b in printable:
            codes[b] = chr(b)
        else:
            codes[b] = chr(256 + extra)
            extra += 1
    return tuple(codes[b] for b in range(256))


def build_tokenizer() -> PreTrainedTokenizerBase:
    """Return the tiny byte-level tokenizer (257 base tokens + 4 tags)."""
    vocab = {EOS_TOKEN: 0}
    for symbol in byte_alphabet():
        vocab[symbol] = len(vocab)
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        clean_up_tokenization_spaces=False,
    )
    # Tags are plain (non-special) added tokens: kept in decoded text, matched whole.
    tok.add_tokens([AddedToken(tag, special=False, normalized=False) for tag in TAG_TOKENS])
    tok.padding_side = "left"
    return tok


def save_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """Build the tokenizer and write it to ``path`` in Hugging Face format."""
    tok = build_tokenizer()
    tok.save_pretrained(str(path))
    return tok
