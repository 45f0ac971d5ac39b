"""Fast tests of the engine's pieces: config validation, start-up checks, stop strings,
request coalescing, the weight gate, top-p. No engine is started here.

Nothing here asserts how long something took, and nothing is ordered by sleeping: the order
of concurrent steps comes from events (and event-loop turns), so the tests hold on a loaded
machine. ``HANG_GUARD_S`` only turns a hang into a failure."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from langrl.engine import EngineConfig, EngineStartError, create_engine
from langrl.engine.common import (
    Coalescer,
    WeightGate,
    check_model_path,
    find_stop,
    single_token_stop_id,
    stop_overhang,
    token_budget_chunks,
)
from langrl.engine.hf_engine import processed_logprobs
from langrl.engine.worker_extension import decode_weights, encode_weights
from langrl.tiny.bpe_tokenizer import build_bpe_tokenizer
from langrl.tiny.tokenizer import build_tokenizer

#: Seconds after which a wait that must end is taken for a hang (a guard, not a measurement).
HANG_GUARD_S = 60.0

# --- config ---


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("backend", "tgi"),
        ("dtype", "int8"),
        ("max_model_len", 1),
        ("gpu_memory_utilization", 1.5),
        ("gpu_memory_utilization", 0.0),
        ("kv_cache_gib", -1.0),
        ("block_size", 0),
        ("max_num_seqs", 0),
        ("startup_timeout_s", 0),
        ("forward_batch_tokens", 0),
        ("hf_batch_wait_ms", -1),
    ],
)
def test_config_rejects_bad_values_quoting_them(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"EngineConfig.{field}.*{value!r}"):
        EngineConfig(model="m", **{field: value})


def test_config_defaults_are_valid() -> None:
    config = EngineConfig()
    assert config.backend == "vllm" and config.enable_prefix_caching
    assert config.tokenizer_path == ""
    assert EngineConfig(model="m", tokenizer="t").tokenizer_path == "t"


# --- start-up checks: clear, one-line, fast ---


def test_check_model_path_errors(tmp_path: Path) -> None:
    with pytest.raises(EngineStartError, match="EngineConfig.model is empty"):
        check_model_path(EngineConfig())
    with pytest.raises(EngineStartError, match="does not exist"):
        check_model_path(EngineConfig(model=str(tmp_path / "missing")))
    (tmp_path / "file.bin").write_text("x")
    with pytest.raises(EngineStartError, match="is a file"):
        check_model_path(EngineConfig(model=str(tmp_path / "file.bin")))
    with pytest.raises(EngineStartError, match="no config.json"):
        check_model_path(EngineConfig(model=str(tmp_path)))
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 128}))
    with pytest.raises(EngineStartError, match="max_model_len=256 exceeds.*128"):
        check_model_path(EngineConfig(model=str(tmp_path), max_model_len=256))
    assert check_model_path(EngineConfig(model=str(tmp_path))).max_model_len == 128


def test_check_model_path_shares_the_config_check_for_hub_names(offline_hub_cache) -> None:
    # The same check as langrl.training.config (model_source_error), under the engine's prefix.
    with pytest.raises(
        EngineStartError, match="^EngineConfig.model: 'org/missing' .*HF_HUB_OFFLINE"
    ):
        check_model_path(EngineConfig(model="org/missing"))
    offline_hub_cache("org/cached")
    config = check_model_path(EngineConfig(model="org/cached"))
    assert config.max_model_len is None  # resolved from the loaded model


@pytest.mark.parametrize("backend", ["vllm", "hf"])
def test_bad_path_fails_fast_with_one_line(
    tmp_path: Path, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "Fast" as in: refused before anything slow starts (no model load, no vLLM start).
    import langrl.engine.hf_engine as hf_engine
    import langrl.engine.vllm_engine as vllm_engine

    started: list[str] = []

    def slow_start(name: str):
        return lambda *args, **kwargs: started.append(name)

    monkeypatch.setattr(hf_engine, "load_value_model", slow_start("hf load_value_model"))
    monkeypatch.setattr(vllm_engine, "load_value_model", slow_start("vllm load_value_model"))
    monkeypatch.setattr(vllm_engine, "_start_async_llm", slow_start("vllm _start_async_llm"))
    with pytest.raises(EngineStartError) as info:
        create_engine(EngineConfig(model=str(tmp_path / "nope"), backend=backend))
    assert started == []
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "nope") in message


def test_missing_vllm_says_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(EngineStartError, match="scripts/setup.sh.*backend='hf'"):
        create_engine(EngineConfig(model=str(tmp_path)))


# --- stop strings ---


def test_find_stop_semantics() -> None:
    assert find_stop("abc</step>", ["</step>"], 3) == (10, "</step>")
    # Only matches ending in the new text count: an old match is not found again.
    assert find_stop("x</step>yz", ["</step>"], 9) is None
    # A stop string that straddles the old/new boundary is found.
    assert find_stop("ab</st" + "ep>", ["</step>"], 6) == (9, "</step>")
    # The earliest-ending match wins; the text is cut right after it.
    assert find_stop("12+3=", ["=", "+"], 0) == (3, "+")
    assert find_stop("abc", [], 0) is None


def test_stop_overhang_is_what_the_ids_hold_past_the_stop_string() -> None:
    tok = build_bpe_tokenizer()  # Qwen2-style BPE: "</step><step>" -> "</" "step" "><" ...
    ids = tok("<step>1 + 2 = 3</step><step>", add_special_tokens=False)["input_ids"][:-2]
    decoded = tok.decode(ids)
    assert decoded == "<step>1 + 2 = 3</step><"  # the last id is the merged "><"
    # What an engine does: cut the text at the stop, keep every id.
    end, stop = find_stop(decoded, ["</step>"], 0)
    text = decoded[:end]
    assert stop_overhang(tok, ids, text, stop) == "<"
    # Special tokens are skipped, as in the engines' text.
    assert stop_overhang(tok, [*ids, tok.eos_token_id], text, stop) == "<"
    # A stop on a token boundary, an EOS or stop-token stop, or no stop: nothing over.
    whole = tok("<step>1</step>", add_special_tokens=False)["input_ids"]
    assert stop_overhang(tok, whole, "<step>1</step>", "</step>") == ""
    assert stop_overhang(tok, ids, decoded, None) == ""
    assert stop_overhang(tok, ids, decoded, tok.eos_token_id) == ""
    # Text that is not a prefix of the decode (untrusted output) gives no invented overhang.
    assert stop_overhang(tok, ids, "<step>9</step>", "</step>") == ""


def test_single_token_stop_id_only_for_a_token_that_is_exactly_the_stop() -> None:
    tok = build_tokenizer()  # the tiny policy's: one token per tag, one per byte
    step_close = tok("</step>", add_special_tokens=False)["input_ids"]
    assert len(step_close) == 1
    assert single_token_stop_id(tok, "</step>") == step_close[0]
    assert single_token_stop_id(tok, "a") == tok("a", add_special_tokens=False)["input_ids"][0]
    assert single_token_stop_id(tok, "</st") is None  # several tokens
    assert single_token_stop_id(tok, tok.eos_token) is None  # special: decodes to ""
    bpe = build_bpe_tokenizer()  # "</step>" is "</" "step" ">" there
    assert single_token_stop_id(bpe, "</step>") is None


# --- coalescing, gate, chunks ---


def test_coalescer_batches_concurrent_calls_and_routes_results() -> None:
    calls: list[list[int]] = []
    running, release = threading.Event(), threading.Event()

    def square(items: list[int]) -> list[int]:
        calls.append(list(items))
        running.set()
        assert release.wait(HANG_GUARD_S), "the test never released the batch"
        return [x * x for x in items]

    async def main() -> tuple[list[int], list[list[int]]]:
        coalescer = Coalescer(square, ThreadPoolExecutor(1))
        first = asyncio.ensure_future(coalescer.submit([-1]))
        await asyncio.to_thread(running.wait)  # the first batch now runs (and is held)
        rest = [asyncio.ensure_future(coalescer.submit([i, i + 100])) for i in range(20)]
        await asyncio.sleep(0)  # one loop turn: each of the 20 calls has queued its items
        release.set()
        return await first, await asyncio.gather(*rest)

    first, results = asyncio.run(main())
    assert first == [1]
    assert results == [[i * i, (i + 100) ** 2] for i in range(20)]
    # The 20 calls that arrived while a batch ran went into the next batch, together.
    assert calls == [[-1], [x for i in range(20) for x in (i, i + 100)]]


def test_coalescer_passes_errors_to_every_caller() -> None:
    def boom(items: list[int]) -> list[int]:
        raise RuntimeError("boom")

    async def main() -> list[object]:
        coalescer = Coalescer(boom, ThreadPoolExecutor(1))
        return await asyncio.gather(
            *(coalescer.submit([i]) for i in range(3)), return_exceptions=True
        )

    assert all(isinstance(r, RuntimeError) for r in asyncio.run(main()))


async def _loop_turns(n: int = 20) -> None:
    """Let every task that can run on this event loop run ``n`` steps (no clock involved:
    the gate's waits are all on the loop, so this orders them deterministically)."""
    for _ in range(n):
        await asyncio.sleep(0)


def test_weight_gate_push_waits_for_readers_and_holds_new_ones() -> None:
    events: list[str] = []

    async def reader(gate: WeightGate, name: str, done: asyncio.Event) -> None:
        async with gate.shared():
            events.append(f"{name}+")
            await done.wait()
            events.append(f"{name}-")

    async def writer(gate: WeightGate) -> None:
        async with gate.exclusive():
            events.append("push")

    async def main() -> None:
        gate = WeightGate()
        a_done, b_done = asyncio.Event(), asyncio.Event()
        b_done.set()
        first = asyncio.create_task(reader(gate, "a", a_done))
        await _loop_turns()
        assert events == ["a+"]
        push = asyncio.create_task(writer(gate))
        await _loop_turns()
        assert events == ["a+"], "the push did not wait for the reader in flight"
        late = asyncio.create_task(reader(gate, "b", b_done))  # arrives while the push waits
        await _loop_turns()
        assert events == ["a+"], "a new reader got in ahead of the waiting push"
        a_done.set()
        await asyncio.gather(first, push, late)

    asyncio.run(main())
    assert events == ["a+", "a-", "push", "b+", "b-"]


def test_token_budget_chunks_cover_all_rows_within_budget() -> None:
    lengths = [5, 50, 7, 30, 2, 100]
    chunks = token_budget_chunks(lengths, budget=100)
    assert sorted(i for c in chunks for i in c) == list(range(len(lengths)))
    for chunk in chunks:
        assert len(chunk) == 1 or len(chunk) * max(lengths[i] for i in chunk) <= 100


# --- sampling maths and weight transport ---


def test_processed_logprobs_temperature_and_top_p() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]] * 2)
    t = torch.tensor([1.0, 0.5])
    logp = processed_logprobs(logits, t, torch.ones(2))
    torch.testing.assert_close(logp[0], torch.log_softmax(logits[0], -1))
    torch.testing.assert_close(logp[1], torch.log_softmax(logits[1] / 0.5, -1))
    # top_p = 0.7 keeps the smallest prefix of tokens reaching 70% (here the top two).
    nucleus = processed_logprobs(logits[:1], torch.ones(1), torch.tensor([0.7]))[0]
    assert torch.isfinite(nucleus[:2]).all() and torch.isinf(nucleus[2:]).all()
    torch.testing.assert_close(nucleus[:2].exp().sum(), torch.tensor(1.0))


def test_weight_records_round_trip() -> None:
    state = {"a": torch.randn(3, 4), "b": torch.randn(5).to(torch.bfloat16), "c": torch.ones(())}
    decoded = dict(decode_weights(encode_weights(state)))
    for name, tensor in state.items():
        assert decoded[name].dtype == tensor.dtype
        torch.testing.assert_close(decoded[name], tensor)


# --- scoring ---


def test_scores_project_only_completion_positions_in_chunks(
    tiny_policy_model, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``engine.score``'s maths equals full-vocabulary log_softmax at every completion token,
    while the output layer only ever sees ``SCORE_CHUNK_POSITIONS`` rows at once."""
    import langrl.engine.common as common
    import langrl.policy_model as policy_model

    model = tiny_policy_model
    pairs = [([5, 6, 7], [8, 9, 10, 11]), ([5, 6], [12]), ([7, 8, 9, 10], [])]
    rows_seen: list[int] = []
    head = policy_model.lm_head_fp32

    def recording_head(lm, hidden):
        rows_seen.append(hidden.reshape(-1, hidden.shape[-1]).shape[0])
        return head(lm, hidden)

    monkeypatch.setattr(policy_model, "lm_head_fp32", recording_head)
    monkeypatch.setattr(common, "SCORE_CHUNK_POSITIONS", 2)
    got = common.completion_logprobs(model, pairs)
    assert [len(g) for g in got] == [4, 1, 0]
    assert rows_seen == [2, 2, 1]  # 5 completion tokens in chunks of 2; never B x T x V
    with torch.no_grad():
        for (prompt, completion), scores in zip(pairs, got, strict=True):
            ids = torch.tensor([prompt + completion])
            logits, _ = model(ids)  # (1, T, V) float32
            full = torch.log_softmax(logits[0, :-1], dim=-1)  # (T-1, V)
            want = [full[len(prompt) - 1 + j, t].item() for j, t in enumerate(completion)]
            assert scores == pytest.approx(want, abs=1e-5)


# --- a dead engine process: the watchdog (the real-engine tests: test_engine_death.py) ---


class _NeverAnsweringLLM:
    """Stands in for ``AsyncLLM`` whose engine process is ``proc``: no call ever returns,
    as vLLM's pending utility calls once that process is gone."""

    def __init__(self, proc: object | None) -> None:
        manager = SimpleNamespace(processes=[proc] if proc is not None else [])
        self.engine_core = SimpleNamespace(resources=SimpleNamespace(engine_manager=manager))
        self.errored = False
        self.calls: list[str] = []  # the calls that have arrived (and wait forever)
        self._arrived = asyncio.Event()

    def _arrive(self, name: str) -> None:
        self.calls.append(name)
        self._arrived.set()

    async def until_calls(self, n: int) -> None:
        """Return once ``n`` calls have arrived here (an event, not a clock)."""
        while len(self.calls) < n:
            self._arrived.clear()
            await self._arrived.wait()

    async def collective_rpc(self, *args: object, **kwargs: object) -> list:
        self._arrive("collective_rpc")
        await asyncio.Event().wait()
        return []

    async def generate(self, *args: object, **kwargs: object):
        self._arrive("generate")
        await asyncio.Event().wait()
        yield None

    def shutdown(self) -> None:
        pass


def test_watchdog_fails_pending_calls_when_the_engine_process_is_killed(
    tiny_policy_model,
) -> None:
    import multiprocessing
    import signal

    from langrl.engine import EngineDiedError, SamplingConfig
    from langrl.engine.vllm_engine import WATCHDOG_INTERVAL_S, VLLMEngine

    # Pending calls fail once the watchdog finds the process gone; it looks every
    # WATCHDOG_INTERVAL_S ("within about a second": its latency, measured by nothing here).
    assert WATCHDOG_INTERVAL_S <= 1.0
    proc = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(120,))
    proc.start()
    model = tiny_policy_model.requires_grad_(False)
    lm, head = model.lm.state_dict(), model.value_head.state_dict()
    checks: list[str | None] = []  # what each of the watchdog's checks found

    async def go() -> list[BaseException]:
        llm = _NeverAnsweringLLM(proc)
        engine = VLLMEngine(EngineConfig(model="unused"), model, None, llm, "rpc")
        find_death = engine._find_death

        def recorded_find_death() -> str | None:
            checks.append(found := find_death())
            return found

        engine._find_death = recorded_find_death  # before the watchdog's first check
        try:
            pending = [
                asyncio.ensure_future(engine.generate([5, 6, 7], SamplingConfig(max_tokens=4))),
                asyncio.ensure_future(engine.weight_checksum()),
            ]
            await llm.until_calls(2)  # both wait inside "vLLM"
            # The push queues at the weight gate, behind the generate call in flight.
            pending.append(asyncio.ensure_future(engine.load_weights_async(lm, head)))
            await _loop_turns()
            assert not any(p.done() for p in pending)
            assert all(found is None for found in checks)  # alive until now
            os.kill(proc.pid, signal.SIGKILL)
            return await asyncio.wait_for(
                asyncio.gather(*pending, return_exceptions=True), HANG_GUARD_S
            )
        finally:
            engine.shutdown()

    try:
        errors = asyncio.run(go())
    finally:
        proc.kill()
        proc.join()
    # The watchdog found the death (it, not the guard, ended the wait) and then stopped.
    assert checks and checks[-1] is not None
    assert all(found is None for found in checks[:-1]), checks
    for e in errors:
        assert isinstance(e, EngineDiedError), repr(e)
        assert f"EngineCore (pid {proc.pid}) killed by SIGKILL" in str(e)
        assert "\n" not in str(e)


def test_watchdog_takes_vllms_own_word_for_a_dead_engine(tiny_policy_model) -> None:
    from langrl.engine import EngineDiedError, SamplingConfig
    from langrl.engine.vllm_engine import VLLMEngine

    async def go() -> None:
        llm = _NeverAnsweringLLM(None)  # no process to watch: vLLM's flag only
        engine = VLLMEngine(EngineConfig(model="unused"), tiny_policy_model, None, llm, "rpc")
        try:
            pending = asyncio.ensure_future(engine.generate([5], SamplingConfig(max_tokens=4)))
            await llm.until_calls(1)  # the call waits inside "vLLM"
            llm.errored = True  # what vLLM's monitor sets when EngineCore exits
            with pytest.raises(EngineDiedError, match="vLLM reports its engine dead"):
                await asyncio.wait_for(pending, HANG_GUARD_S)
            with pytest.raises(EngineDiedError):  # and every later call
                await engine.values([[5, 6]])
        finally:
            engine.shutdown()

    asyncio.run(go())


def test_exit_code_waits_for_a_code_that_another_reaper_is_storing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """vLLM's monitor thread and the watchdog reap the same handle; the loser of that race
    reads ``None`` for a moment (as in CI: 'EngineCore exited' instead of 'killed by
    SIGKILL'). The watchdog waits a bounded time for the code to be stored. The wait runs
    on a simulated clock (its sleeps advance it), so load cannot change what is read."""
    import langrl.engine.vllm_engine as vllm_engine
    from langrl.engine.vllm_engine import _exit_code, _exit_description

    clock = SimpleNamespace(now=1000.0)

    def sleep(seconds: float) -> None:
        clock.now += seconds

    monkeypatch.setattr(
        vllm_engine, "time", SimpleNamespace(monotonic=lambda: clock.now, sleep=sleep)
    )

    class ReapedByAnotherThread:
        reads = 0

        @property
        def exitcode(self) -> int | None:
            self.reads += 1
            return None if self.reads < 4 else -9

    assert _exit_description(_exit_code(ReapedByAnotherThread())) == "killed by SIGKILL"

    class NeverStored:
        reads = 0

        @property
        def exitcode(self) -> None:
            self.reads += 1

    never = NeverStored()
    started = clock.now
    assert _exit_description(_exit_code(never, wait_s=0.1)) == "exited"
    assert 0.1 <= clock.now - started <= 0.1 + 0.02  # it waited wait_s, and no longer
    assert never.reads >= 2
    assert _exit_code(None) is None
