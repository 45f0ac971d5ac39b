"""A character-level Hugging Face tokenizer built locally (no download).

Every printable ASCII character is one token; the four reasoning tags are single tokens,
so a stop on ``</step>`` is a stop on one token id. Saved with ``save_pretrained`` it loads
with ``AutoTokenizer.from_pretrained`` in transformers and in vLLM alike.
"""

from __future__ import annotations

import os
import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
UNK_TOKEN = "<unk>"
TAG_TOKENS = ("<step>", "</step>", "<answer>", "</answer>")
# Printable ASCII minus the vertical whitespace we do not need, plus newline.
CHARACTERS = tuple(
    dict.fromkeys(string.digits + string.ascii_letters + string.punctuation + " \n")
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Return the tiny character-level tokenizer (about 100 tokens)."""
    vocab = {EOS_TOKEN: 0, UNK_TOKEN: 1}
    for tag in TAG_TOKENS:
        vocab[tag] = len(vocab)
    for ch in CHARACTERS:
        vocab.setdefault(ch, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    # Tags are matched whole before the split into single characters.
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens([EOS_TOKEN, UNK_TOKEN])
    core.add_tokens(list(TAG_TOKENS))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        clean_up_tokenization_spaces=False,
    )
    tok.padding_side = "left"
    return tok


def save_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerFast:
    """Build the tokenizer and write it to ``path`` in Hugging Face format."""
    tok = build_tokenizer()
    tok.save_pretrained(str(path))
    return tok
