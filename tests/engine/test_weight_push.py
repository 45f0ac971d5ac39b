"""Weight-push paths: vLLM's native weight-transfer API with langrl's shared-memory backend
(``"shm"``) and bytes through ``collective_rpc`` (``"rpc"``), and the choice between them.

The unit tests need no engine. The slow ones push through the session's real vLLM engine
(``tests/conftest.py``; on this CPU-only machine it runs ``"shm"``) by both paths, and check
what vLLM then serves against the transformers copy that got the same weights.
"""

from __future__ import annotations

import asyncio
import errno
import glob
import math
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import langrl.engine.weight_transfer as wt
from langrl.engine import EngineConfig, SamplingConfig, SyncEngine
from langrl.engine.common import tied_parameter_names, untie_state
from langrl.engine.config import EngineStartError
from langrl.engine.worker_extension import decode_weights, encode_weights
from langrl.policy_model import PolicyValueModel
from langrl.tiny import TinyModelSpec, build_random_policy

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


def _full_in(monkeypatch: pytest.MonkeyPatch, *full_dirs: Path) -> None:
    """Make ``posix_fallocate`` fail with ENOSPC for files in ``full_dirs``, as on a full
    tmpfs (the real one: a 1 MiB tmpfs mount, where the old sparse file died of SIGBUS)."""
    real = os.posix_fallocate

    def fallocate(fd: int, offset: int, length: int) -> None:
        where = Path(os.readlink(f"/proc/self/fd/{fd}")).parent
        if where in full_dirs:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, offset, length)

    monkeypatch.setattr(wt.os, "posix_fallocate", fallocate)


def test_a_chunk_that_does_not_fit_goes_to_the_temp_dir(monkeypatch, tmp_path) -> None:
    shm, disk = tmp_path / "shm", tmp_path / "disk"
    shm.mkdir(), disk.mkdir()
    monkeypatch.setattr(wt.tempfile, "tempdir", str(disk))
    _full_in(monkeypatch, shm)
    state = {"w": torch.randn(8, 8)}
    info = wt.write_chunk(state, ["w"], str(shm))
    assert Path(info["path"]).parent == disk and not list(shm.iterdir())  # nothing left
    assert torch.equal(wt.read_chunk(wt.ShmUpdateInfo(**info))[0][1], state["w"])

    _full_in(monkeypatch, shm, disk)
    with pytest.raises(OSError, match=r"no room for a 0 MiB weight chunk \(.*shm: .*disk: "):
        wt.write_chunk(state, ["w"], str(shm))
    assert list(disk.iterdir()) == [Path(info["path"])]  # no half-written file left


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


# --- a tied model's shared tensor travels once ---------------------------------------------

#: Tied like Qwen2.5-1.5B (``build_random_policy`` ties the embeddings), as small as can be.
TIED_TINY = TinyModelSpec(hidden_size=64, num_layers=1, num_heads=1, intermediate_size=128)
EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"


@pytest.fixture(scope="module")
def tied_policy_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_random_policy(tmp_path_factory.mktemp("tied"), TIED_TINY, seed=1)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class WorkerStandIn:
    """Stands in for ``AsyncLLM``: takes each push apart as vLLM's worker would (the rpc
    records decoded, the shm chunk files read) and counts the tensor bytes that travel."""

    def __init__(self) -> None:
        self.loaded: list[tuple[str, torch.Tensor]] = []
        self.bytes_sent = 0

    async def collective_rpc(self, method: str, args: tuple = (), kwargs=None):
        assert method == "langrl_load_weights"
        (records,) = args
        self.bytes_sent += sum(len(r[3]) for r in records if isinstance(r[3], bytes))
        self.loaded = decode_weights(records)
        return [len(records)]

    async def start_weight_update(self) -> None:
        self.loaded = []

    async def update_weights(self, request) -> None:
        info = wt.ShmUpdateInfo(**request.update_info)
        self.bytes_sent += os.path.getsize(info.path)
        self.loaded.extend(wt.read_chunk(info))  # views that outlive the unlinked file

    async def finish_weight_update(self) -> None:
        pass

    async def reset_prefix_cache(self) -> bool:
        return True

    def shutdown(self) -> None:
        pass


def push_through_stand_in(
    path: Path, weight_push: str, lm_state, head_state
) -> tuple[WorkerStandIn, PolicyValueModel, dict]:
    """Push through a ``VLLMEngine`` whose ``AsyncLLM`` is a ``WorkerStandIn`` (no vLLM
    process): what the worker would load, the engine's transformers copy, ``last_push``."""
    from transformers import AutoTokenizer

    from langrl.engine.vllm_engine import VLLMEngine

    async def go():
        model = PolicyValueModel.from_pretrained(path).eval().requires_grad_(False)
        worker = WorkerStandIn()
        engine = VLLMEngine(
            EngineConfig(model=str(path)),
            model,
            AutoTokenizer.from_pretrained(path),
            worker,
            weight_push,
        )
        try:
            assert await engine.load_weights_async(lm_state, head_state) == 1
            return worker, engine.model, engine.last_push
        finally:
            engine.shutdown()

    return asyncio.run(go())


def test_tied_parameter_names_and_untie_state(tied_policy_path: Path) -> None:
    lm = PolicyValueModel.from_pretrained(tied_policy_path).lm
    aliases = tied_parameter_names(lm)
    assert aliases == {HEAD: EMBED}
    state = lm.state_dict()
    assert state[HEAD].data_ptr() == state[EMBED].data_ptr()  # one tensor, two names
    untied = untie_state(state, aliases)
    assert HEAD not in untied and untied[EMBED] is state[EMBED]
    assert set(untied) == set(state) - {HEAD}
    # Equal values under both names (a copy) are one tensor too; the alias alone stands in.
    assert HEAD not in untie_state({**state, HEAD: state[EMBED].clone()}, aliases)
    alone = untie_state({k: v for k, v in state.items() if k != EMBED}, aliases)
    assert HEAD not in alone and alone[EMBED] is state[HEAD]
    with pytest.raises(ValueError, match="'lm_head.weight' is tied to 'model.embed_tokens"):
        untie_state({**state, HEAD: state[EMBED] + 1}, aliases)


def test_alias_records_and_chunk_entries_carry_no_bytes() -> None:
    state = {"e": torch.randn(6, 4), "n": torch.randn(4)}
    records = encode_weights(state, {"h": "e"})
    assert [r[0] for r in records] == ["e", "h", "n"] and records[1][3] == "e"
    decoded = decode_weights(records)
    assert decoded[1][1] is decoded[0][1] and torch.equal(decoded[1][1], state["e"])

    info = wt.write_chunk(state, ["e", "n"], aliases={"h": "e"})
    try:
        assert info["names"] == ["e", "h", "n"] and info["offsets"][0] == info["offsets"][1]
        assert info["nbytes"] == wt._aligned(_nbytes(state["e"])) + wt._aligned(16)
        loaded = dict(wt.read_chunk(wt.ShmUpdateInfo(**info)))
        assert torch.equal(loaded["h"], state["e"]) and torch.equal(loaded["n"], state["n"])
    finally:
        os.unlink(info["path"])


@pytest.mark.parametrize("weight_push", ["shm", "rpc"])
@pytest.mark.parametrize("given", ["state_dict", "export_weights"])
def test_tied_push_sends_the_embedding_once(
    tied_policy_path: Path, weight_push: str, given: str
) -> None:
    """What a push of a tied Qwen2 sends: the embedding's bytes once (not once more for
    ``lm_head.weight``), yet the worker loads both names, from one tensor - whether the
    caller gives ``state_dict()`` (both names, one storage) or ``Learner.export_weights``'s
    form (the alias left out)."""
    source = PolicyValueModel.from_pretrained(tied_policy_path)
    with torch.no_grad():
        source.lm.get_input_embeddings().weight.mul_(-1.5)  # moves the tied head along
    state = source.lm.state_dict()
    if given == "export_weights":
        state = {k: v for k, v in state.items() if k != HEAD}
    worker, copy, stats = push_through_stand_in(
        tied_policy_path, weight_push, state, source.value_head.state_dict()
    )
    unique = [t for k, t in source.lm.state_dict().items() if k != HEAD]
    embed = source.lm.state_dict()[EMBED]
    if weight_push == "rpc":
        assert worker.bytes_sent == sum(_nbytes(t) for t in unique)
    else:
        assert worker.bytes_sent == sum(wt._aligned(_nbytes(t)) for t in unique)
    assert stats["bytes"] == sum(_nbytes(t) for t in unique)
    assert worker.bytes_sent < sum(_nbytes(t) for t in unique) + _nbytes(embed)

    names = [n for n, _ in worker.loaded]
    assert sorted(names) == sorted(source.lm.state_dict())  # every name, each once
    loaded = dict(worker.loaded)
    assert loaded[HEAD].data_ptr() == loaded[EMBED].data_ptr()  # one tensor on arrival
    assert torch.equal(loaded[HEAD], embed)
    # The transformers copy stays tied and holds the pushed embedding.
    assert copy.lm.get_output_embeddings().weight is copy.lm.get_input_embeddings().weight
    assert torch.equal(copy.lm.get_input_embeddings().weight, embed)


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
@pytest.mark.timeout(600)  # may start the session engine (up to its 300 s startup_timeout_s)
def test_session_engine_pushes_through_the_native_api_on_cpu(vllm_engine: SyncEngine) -> None:
    if torch.cuda.is_available():
        pytest.skip("on a GPU the session engine pushes by 'rpc' (choose_weight_push)")
    assert vllm_engine.engine.weight_push == "shm"


@pytest.mark.slow
@pytest.mark.timeout(600)  # may start the session engine (up to its 300 s startup_timeout_s)
@pytest.mark.parametrize("given", ["state_dict", "export_weights"])
@pytest.mark.parametrize("push_path", ["shm", "rpc"], indirect=True)
def test_push_path_serves_the_new_weights(
    vllm_engine: SyncEngine,
    tiny_policy_model: PolicyValueModel,
    preserve_weights,
    push_path: str,
    given: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The test policy ties its embeddings: ``given`` pushes the tied tensor under both
    names (as ``state_dict()`` has it) or under the embedding's only (as
    ``Learner.export_weights``); either way it travels once and vLLM serves it as both.
    vLLM's layerwise reload unties the two layers and, on CPU, ``lm_head`` keeps its own
    packed copy of the weight: when the push left the alias out, that copy stayed at the
    start weights and served logprobs were 0.59 off the copy's (measured before the fix)."""
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
    lm[HEAD] = lm[EMBED]  # tied, as the model is
    if given == "export_weights":
        del lm[HEAD]
    version = vllm_engine.load_weights(lm, tiny_policy_model.value_head.state_dict())
    stats = vllm_engine.engine.last_push
    assert stats is not None and stats["path"] == push_path
    assert stats["bytes"] == sum(_nbytes(t) for k, t in lm.items() if k != HEAD)  # once
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
