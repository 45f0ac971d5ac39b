"""The tiny character-level tokenizer: lossless round trip, tags as single tokens."""

from __future__ import annotations

from transformers import AutoTokenizer

from langrl.tiny.tokenizer import EOS_TOKEN, TAG_TOKENS, build_tokenizer, save_tokenizer

TRACE = (
    "Numbers: 7 4 5 1\nTarget: 24\n"
    "<step>7 * 4 = 28</step><step>28 - 5 = 23</step><step>23 + 1 = 24</step>"
    "<answer>(7 * 4) - 5 + 1</answer>"
)


def test_round_trip_and_single_token_tags(tmp_path):
    save_tokenizer(tmp_path)
    for tok in (build_tokenizer(), AutoTokenizer.from_pretrained(str(tmp_path))):
        ids = tok(TRACE, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == TRACE
        for tag in TAG_TOKENS:
            tag_ids = tok(tag, add_special_tokens=False)["input_ids"]
            assert len(tag_ids) == 1 and tok.decode(tag_ids) == tag
        # Characters are single tokens too: the trace is one id per char, tags aside.
        assert len(ids) == len(TRACE) - sum(TRACE.count(tag) * (len(tag) - 1) for tag in TAG_TOKENS)
        assert tok.eos_token == tok.pad_token == EOS_TOKEN
        assert tok.decode([tok.eos_token_id], skip_special_tokens=True) == ""
