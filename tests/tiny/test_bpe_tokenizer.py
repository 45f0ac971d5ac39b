"""The byte-level BPE tokenizer with merges: Qwen2's splits, merges across the end of
``</step>``, lossless round trip, special tokens, chat template, deterministic build."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from langrl.tiny.bpe_tokenizer import SPECIAL_TOKENS, build_bpe_tokenizer

TRACE = (
    "Numbers: 3 5 7 2\nTarget: 24\n"
    "<step>3 * 7 = 21</step><step>5 - 2 = 3</step>\n<step>21 + 3 = 24</step>"
    "<answer>3 * 7 + 5 - 2</answer>"
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = tmp_path_factory.mktemp("bpe")
    return build_bpe_tokenizer(out), out


def test_a_token_straddles_the_end_of_the_closing_tag(saved):
    tok, _ = saved
    ids = tok("<step>1 + 2 = 3</step><step>", add_special_tokens=False)["input_ids"]
    pieces = [tok.decode([i]) for i in ids]
    # Qwen2's pre-tokenizer isolates "><"; the trained merges make it one token.
    assert pieces[-5:] == ["</", "step", "><", "step", ">"]
    # So no token ends where "</step>" does: its last one carries the next tag's "<".
    end = "".join(pieces).index("</step>") + len("</step>")
    token_ends = [len("".join(pieces[: k + 1])) for k in range(len(pieces))]
    assert end not in token_ends


def test_round_trip_reload_and_special_tokens(saved):
    built, out = saved
    reloaded = AutoTokenizer.from_pretrained(str(out))
    ids = built(TRACE, add_special_tokens=False)["input_ids"]
    # Real merges: far fewer tokens than characters.
    assert len(ids) < 0.8 * len(TRACE)
    for tok in (built, reloaded):
        assert tok(TRACE, add_special_tokens=False)["input_ids"] == ids
        assert tok.decode(ids) == TRACE
        assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
        special = [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
        assert special == list(range(len(tok) - 3, len(tok)))
        with_eos = ids + [tok.eos_token_id]
        assert tok.decode(with_eos, skip_special_tokens=True) == TRACE
        # Special tokens are matched whole in text, never split into bytes.
        assert tok("<|im_start|>", add_special_tokens=False)["input_ids"] == [special[1]]
        # Any bytes encode (the full byte alphabet is in the vocabulary).
        odd = "naïve ∑ 😀 \t\r\n"
        assert tok.decode(tok(odd, add_special_tokens=False)["input_ids"]) == odd


def test_chat_template_renders_chatml(saved):
    _, out = saved
    tok = AutoTokenizer.from_pretrained(str(out))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1 + 2?"}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n1 + 2?<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = tok.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert tok.decode(ids) == text


def test_build_is_deterministic():
    a, b = build_bpe_tokenizer(), build_bpe_tokenizer()
    assert a.get_vocab() == b.get_vocab()
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    assert len(build_bpe_tokenizer(vocab_size=300)) == 300 + len(SPECIAL_TOKENS)
