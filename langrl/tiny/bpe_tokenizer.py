"""A byte-level BPE tokenizer *with merges*, trained locally in well under a second.

The tiny default policy's tokenizer (``langrl.tiny.tokenizer``) has no merges and makes each
tag one token, so a stop string such as ``</step>`` always ends on a token boundary. Real BPE
tokenizers do not: Qwen2's pre-tokenizer splits ``</step><step>`` into
``'</', 'step', '><', 'step', '>'``, and once ``><`` is a merged token a sample stopped at
``</step>`` holds a last token whose text runs past the stop (``Sample.overhang``). This
tokenizer reproduces that with no download: Qwen2's split regex and byte-level alphabet,
merges learned (``tokenizers``' BPE trainer) from Countdown prompts and solver traces that
the env's own generator and solver write (no data files needed) plus the Countdown and
GSM8K instructions, Qwen's special tokens (``<|endoftext|>``, ``<|im_start|>``,
``<|im_end|>``) and a Qwen-style ChatML chat template.

It is built through ``Qwen2Tokenizer`` (vocabulary + merges), like the tiny tokenizer and for
the same reason: transformers 5 rebuilds a ``Qwen2Tokenizer`` from the saved vocabulary for a
``qwen2`` model folder, so a model saved with it reloads to the very same ids.

    >>> tok = build_bpe_tokenizer()
    >>> tok.convert_ids_to_tokens(tok("</step><step>")["input_ids"])
    ['</', 'step', '><', 'step', '>']
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

from langrl.envs import countdown, gsm8k

__all__ = ["CHAT_TEMPLATE", "SPECIAL_TOKENS", "build_bpe_tokenizer", "training_texts"]

#: Qwen2's special tokens, in Qwen's id order (after the BPE vocabulary).
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
#: Qwen's ChatML layout, without Qwen2.5's default system message.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def training_texts(num_tasks: int = 400, seed: int = 0) -> list[str]:
    """The training corpus: both envs' instructions, then ``num_tasks`` generated Countdown
    problems (``CountdownGeneratorConfig(seed=seed)``), each its prompt and solver trace in
    the format the policies write (``<step>...</step>...<answer>...</answer>``)."""
    texts = [countdown.SYSTEM_PROMPT, gsm8k.SYSTEM_PROMPT]
    config = countdown.CountdownGeneratorConfig(seed=seed)
    for task in countdown.generate_tasks(config, num_tasks):
        # Generated targets are reachable by construction, so the solver always finds one.
        steps = countdown.solution_steps(task.numbers, task.target) or []
        texts.append(countdown.format_prompt(task) + "".join(steps))
    return texts


def _train_bpe(texts: Iterable[str], vocab_size: int) -> tuple[dict[str, int], list[tuple]]:
    """Vocabulary and merges of a byte-level BPE trained on ``texts`` with Qwen2's
    normalizer and pre-tokenizer (the pipeline ``Qwen2Tokenizer`` rebuilds on load)."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        # All 256 byte symbols, seen or not, so that any text (and any model output) encodes.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    model = json.loads(tok.to_str())["model"]
    return dict(model["vocab"]), [tuple(pair) for pair in model["merges"]]


def build_bpe_tokenizer(
    out_dir: str | os.PathLike | None = None,
    vocab_size: int = 512,
    num_tasks: int = 400,
    seed: int = 0,
) -> PreTrainedTokenizerFast:
    """Train the byte-level BPE tokenizer and, with ``out_dir``, save it there
    (``save_pretrained``: ``AutoTokenizer.from_pretrained(out_dir)`` reloads it).

    Args:
        out_dir: Folder to write to; ``None`` only returns the tokenizer.
        vocab_size: Upper bound on the BPE vocabulary (256 bytes + merges; the corpus
            runs out of pairs to merge at about 480), the 3 special tokens not counted.
        num_tasks: Generated Countdown traces in the corpus (``training_texts``).
        seed: Seed of the generated Countdown problems.

    The same arguments give the same tokenizer. ``eos_token`` is ``<|im_end|>`` and
    ``pad_token`` ``<|endoftext|>``, as in Qwen2.5-Instruct.
    """
    if vocab_size < 256:
        raise ValueError(f"vocab_size must be >= 256 (the byte alphabet), got {vocab_size}")
    vocab, merges = _train_bpe(training_texts(num_tasks, seed), vocab_size)
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        clean_up_tokenization_spaces=False,
    )
    # Special: matched whole, never merged with text, dropped by skip_special_tokens.
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    if out_dir is not None:
        tok.save_pretrained(str(out_dir))
    return tok
