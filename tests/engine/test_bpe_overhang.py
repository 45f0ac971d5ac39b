"""Engines on a real byte-level BPE tokenizer (merges across tag boundaries, as Qwen2's):
a stop string that ends inside a token leaves ``Sample.overhang``, and
``text + overhang == decode(token_ids)`` for every sample.

The model is a random tiny Qwen2 sized to ``langrl.tiny.bpe_tokenizer``'s vocabulary; its
output is noise, so single-letter stop strings land inside multi-letter tokens often. The
HF engine runs here in seconds; the vLLM one (``slow``) starts its own engine on this model.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from langrl.engine import EngineConfig, SamplingConfig, SyncEngine, create_engine
from langrl.tiny.bpe_tokenizer import build_bpe_tokenizer
from langrl.tiny.model import build_random_policy

PROMPT = "Numbers: 3 5 7 2\nTarget: 24\n<step>3 * 7 = 21</step>"
# Letters inside many merged tokens ("step", "Target", "answer"), and the real step stop.
STOPS = ("</step>", "e", "t", "s")


@pytest.fixture(scope="module")
def bpe_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bpe_policy")
    return build_random_policy(path, "test", seed=0, tokenizer=build_bpe_tokenizer())


@pytest.fixture(
    scope="module",
    # Starting vLLM may take up to its 300 s startup_timeout_s: a longer test timeout.
    params=["hf", pytest.param("vllm", marks=[pytest.mark.slow, pytest.mark.timeout(600)])],
)
def bpe_engine(request: pytest.FixtureRequest, bpe_policy: Path) -> Iterator[SyncEngine]:
    if request.param == "vllm" and importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed (run scripts/setup.sh)")
    config = EngineConfig(
        model=str(bpe_policy),
        backend=request.param,
        seed=0,
        enforce_eager=True,
        kv_cache_gib=0.5,
        use_chat_template=False,
        startup_timeout_s=300,
    )
    engine = create_engine(config)
    try:
        yield engine
    finally:
        engine.shutdown()


def test_the_policy_folder_reloads_the_bpe_tokenizer(bpe_policy: Path) -> None:
    # transformers rebuilds a Qwen2Tokenizer for a qwen2 model folder: same ids, same merges.
    built, loaded = build_bpe_tokenizer(), AutoTokenizer.from_pretrained(str(bpe_policy))
    assert loaded(PROMPT)["input_ids"] == built(PROMPT)["input_ids"]
    assert loaded.chat_template == built.chat_template
    assert loaded.eos_token_id == built.eos_token_id


def test_text_plus_overhang_is_the_decoded_ids(bpe_engine: SyncEngine) -> None:
    tok = bpe_engine.tokenizer
    prompt = tok(PROMPT, add_special_tokens=False)["input_ids"]
    sampling = SamplingConfig(n=16, max_tokens=32, temperature=1.0, stop=STOPS, seed=5)
    samples = bpe_engine.generate(prompt, sampling).samples
    for s in samples:
        assert s.text + s.overhang == tok.decode(s.token_ids, skip_special_tokens=True)
        if isinstance(s.stop_reason, str):
            assert s.finish_reason == "stop" and s.text.endswith(s.stop_reason)
            # The stop ended inside the last token: everything over is that token's.
            assert len(s.overhang) < len(tok.decode(s.token_ids[-1:]))
        else:
            assert s.overhang == ""
    assert any(s.overhang for s in samples), "no stop string ended inside a token"
