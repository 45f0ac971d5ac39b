"""Weight-push paths: vLLM's native weight-transfer API with langrl's shared-memory backend
(``"shm"``) and bytes through ``collective_rpc`` (``"rpc"``), and the choice between them.

The unit tests need no engine. The slow ones push through the session's real vLLM engine
(``tests/conftest.py``; on this CPU-only machine it runs ``"shm"``) by both paths, and check
what vLLM then serves against the transformers copy that got the same weights.
"""

from __future__ import annotations

import glob
import math
import os
from dataclasses import replace

import pytest
import torch

import langrl.engine.weight_transfer as wt
from langrl.engine import EngineConfig, SamplingConfig, SyncEngine
from langrl.engine.config import EngineStartError
from langrl.policy_model import PolicyValueModel

LOGPROB_TOL = 1e-3


def shm_files() -> set[str]:
    return set(glob.glob(os.path.join(wt.shm_directory(), "langrl-weights-*")))


# --- the shared-memory chunk format ------------------------------------------------------


def test_chunks_round_trip_every_dtype_and_outlive_the_unlinked_file() -> None:
    state = {
        "a": torch.randn(3, 5),
        "b": torch.arange(7, dtype=torch.int64),
        "c": torch.randn(4, dtype=torch.bfloat16),
        "d": torch.randn(2, 3, dtype=torch.float16).t(),  # not contiguous
        "e": torch.zeros(0),
        "f": torch.tensor(2.5),
    }
    info = wt.write_chunk(state, list(state))
    assert all(off % 64 == 0 for off in info["offsets"])
    loaded = wt.read_chunk(wt.ShmUpdateInfo(**info))
    os.unlink(info["path"])  # what the frontend does once the worker has loaded
    assert [n for n, _ in loaded] == list(state)
    for name, t in loaded:
        assert t.dtype == state[name].dtype and t.shape == state[name].shape
        assert torch.equal(t, state[name]), name


def test_plan_chunks_keeps_order_and_budget() -> None:
    state = {k: torch.zeros(n) for k, n in [("a", 10), ("b", 10), ("c", 100), ("d", 1)]}
    # Aligned sizes: 64, 64, 448, 64 bytes.
    assert wt.plan_chunks(state, 128) == [["a", "b"], ["c"], ["d"]]
    assert wt.plan_chunks(state, 10_000) == [["a", "b", "c", "d"]]
    assert wt.plan_chunks(state, 1) == [["a"], ["b"], ["c"], ["d"]]


def test_update_info_rejects_ragged_fields() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        wt.ShmUpdateInfo(path="x", nbytes=4, names=["a"], dtype_names=[], shapes=[[1]], offsets=[0])


def test_backend_is_registered_with_vllm_factory() -> None:
    from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

    assert wt.register_backend() and wt.register_backend()  # idempotent
    assert WeightTransferEngineFactory._registry[wt.SHM_BACKEND]() is (
        wt.SharedMemoryWeightTransferEngine
    )


# --- the choice ------------------------------------------------------------------------------


def test_choose_weight_push(monkeypatch: pytest.MonkeyPatch) -> None:
    from langrl.engine import vllm_engine

    config = EngineConfig(model="m")
    assert vllm_engine.native_weight_transfer_available()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert vllm_engine.choose_weight_push(config) == "shm"
    assert vllm_engine.choose_weight_push(replace(config, weight_push="rpc")) == "rpc"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert vllm_engine.choose_weight_push(config) == "rpc"  # GPU: see the module docstring
    assert vllm_engine.choose_weight_push(replace(config, weight_push="shm")) == "shm"
    monkeypatch.setattr(vllm_engine, "native_weight_transfer_available", lambda: False)
    assert vllm_engine.choose_weight_push(config) == "rpc"
    with pytest.raises(EngineStartError, match="weight_push='shm' needs"):
        vllm_engine.choose_weight_push(replace(config, weight_push="shm"))
    with pytest.raises(ValueError, match="weight_push must be one of"):
        EngineConfig(weight_push="nccl")


# --- both paths on the real engine ---------------------------------------------------------


@pytest.fixture
def push_path(vllm_engine: SyncEngine, request: pytest.FixtureRequest):
    """Switch the session engine to ``request.param``'s push path for one test."""
    engine = vllm_engine.engine
    chosen = engine.weight_push
    engine.weight_push = request.param
    try:
        yield request.param
    finally:
        engine.weight_push = chosen


@pytest.mark.slow
def test_session_engine_pushes_through_the_native_api_on_cpu(vllm_engine: SyncEngine) -> None:
    if torch.cuda.is_available():
        pytest.skip("on a GPU the session engine pushes by 'rpc' (choose_weight_push)")
    assert vllm_engine.engine.weight_push == "shm"


@pytest.mark.slow
@pytest.mark.parametrize("push_path", ["shm", "rpc"], indirect=True)
def test_push_path_serves_the_new_weights(
    vllm_engine: SyncEngine,
    tiny_policy_model: PolicyValueModel,
    preserve_weights,
    push_path: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    preserve_weights(vllm_engine)
    # Chunks far smaller than a layer: layers span update_weights calls and files.
    monkeypatch.setattr(wt, "DEFAULT_CHUNK_BYTES", 48 << 10)
    prompt = list(vllm_engine.tokenizer("3 5 7 2 -> 24: ", add_special_tokens=False)["input_ids"])
    sampling = SamplingConfig(n=2, max_tokens=16, temperature=1.0, seed=3)
    before = vllm_engine.generate(prompt, sampling)
    files = shm_files()

    g = torch.Generator().manual_seed(0)
    lm = {
        k: v + 0.05 * torch.randn(v.shape, generator=g)
        for k, v in tiny_policy_model.lm.state_dict().items()
    }
    lm["lm_head.weight"] = lm["model.embed_tokens.weight"]  # tied, as the model is
    version = vllm_engine.load_weights(lm, tiny_policy_model.value_head.state_dict())
    stats = vllm_engine.engine.last_push
    assert stats is not None and stats["path"] == push_path
    assert stats["bytes"] == sum(t.numel() * t.element_size() for t in lm.values())
    assert min(stats["encode_s"], stats["load_s"], stats["reset_s"]) >= 0
    assert shm_files() == files  # every chunk file is gone

    after = vllm_engine.generate(prompt, sampling)
    assert after.policy_version == version
    assert [s.logprobs for s in after.samples] != [s.logprobs for s in before.samples]
    # The transformers copy holds the pushed weights: vLLM must serve the same (T=1).
    scores = vllm_engine.score(prompt, [s.token_ids for s in after.samples])
    for s, ref in zip(after.samples, scores, strict=True):
        gap = max(abs(a - b) for a, b in zip(s.logprobs, ref, strict=True))
        assert gap < LOGPROB_TOL, f"served vs pushed logprob gap {gap:.1e} ({push_path})"

    # And a second push replaces the first completely (zero final norm: uniform policy).
    lm["model.norm.weight"] = torch.zeros_like(lm["model.norm.weight"])
    vllm_engine.load_weights(lm, tiny_policy_model.value_head.state_dict())
    uniform = -math.log(tiny_policy_model.lm.config.vocab_size)
    for s in vllm_engine.generate(prompt, sampling).samples:
        assert s.logprobs == pytest.approx([uniform] * len(s.logprobs), abs=1e-4)
