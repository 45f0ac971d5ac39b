"""A vLLM engine whose serving process dies fails its pending calls within seconds.

Each test starts its own small engine (never the shared session engine), freezes one of its
processes with SIGSTOP so that calls are caught pending, then SIGKILLs it - the OOM killer's
signal - and requires every pending call, and every later one, to raise ``EngineDiedError``
(the watchdog looks every ``WATCHDOG_INTERVAL_S``). Before the watchdog, a weight push caught
in vLLM waited forever (vLLM resolves no pending utility call once its engine process is
gone) and held the weight gate, so the ``generate`` calls queued behind it hung too.

Nothing is ordered by sleeping: each call is submitted once the one before it is observed
where it must wait (in vLLM, at the weight gate), and no duration is asserted:
``HANG_GUARD_S`` only turns a hang into a failure.

The processes are found as descendants of this test process that appeared while the engine
started (psutil), never by name: other vLLM processes on the machine are not ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import replace

import psutil
import pytest

from langrl.engine import EngineConfig, EngineDiedError, SamplingConfig, SyncEngine, create_engine
from langrl.policy_model import PolicyValueModel

# Each test starts an engine of its own (up to its 300 s startup_timeout_s).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

#: Seconds after which a call still pending is taken for hung (the bug these tests are about).
#: A guard, not a measurement: the watchdog fails the calls within about a second.
HANG_GUARD_S = 120.0

SAMPLING = SamplingConfig(n=2, max_tokens=32, temperature=1.0, seed=0)


def _descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


@pytest.fixture
def own_engine(tiny_engine_config: EngineConfig) -> Iterator[tuple[SyncEngine, psutil.Process]]:
    """A fresh small engine and its EngineCore process; at teardown every process of that
    engine still running is killed (they are ours)."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed (run scripts/setup.sh)")
    before = _descendants()
    engine = create_engine(replace(tiny_engine_config, kv_cache_gib=0.25, max_num_seqs=8))
    # psutil handles: is_running() checks the start time too, so a worker orphaned by its
    # engine core's death is still recognised, and a reused pid is never signalled.
    ours: list[psutil.Process] = []
    try:
        core = _engine_core(_descendants() - before)
        ours = [core, *core.children(recursive=True)]
        yield engine, core
    finally:
        for proc in ours:  # a test that failed midway may have left one stopped
            with contextlib.suppress(psutil.Error):
                if proc.is_running() and proc.status() == psutil.STATUS_STOPPED:
                    proc.send_signal(signal.SIGCONT)
        with contextlib.suppress(Exception):
            engine.shutdown()
        for proc in ours:
            with contextlib.suppress(psutil.Error):
                if proc.is_running():
                    proc.kill()


def _engine_core(started: set[int]) -> psutil.Process:
    """The EngineCore: the one child of this process, started with the engine, that has
    children of its own (its workers)."""
    cores = [
        p for p in psutil.Process().children() if p.pid in started and p.children(recursive=True)
    ]
    assert len(cores) == 1, f"expected one engine-core child, found {cores}"
    return cores[0]


def _prompt(engine: SyncEngine) -> list[int]:
    return list(engine.tokenizer("3 5 7 2 -> 24: ", add_special_tokens=False)["input_ids"])


def _push_in_thread(engine: SyncEngine, model: PolicyValueModel) -> Future[int]:
    """``SyncEngine.load_weights`` (blocking) from a trainer-like thread, as a future."""
    fut: Future[int] = Future()

    def run() -> None:
        try:
            fut.set_result(
                engine.load_weights(model.lm.state_dict(), model.value_head.state_dict())
            )
        except BaseException as e:  # noqa: BLE001 - handed to the test
            fut.set_exception(e)

    threading.Thread(target=run, daemon=True).start()
    return fut


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until it holds (a hang after ``HANG_GUARD_S`` fails the test)."""
    deadline = time.monotonic() + HANG_GUARD_S
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.01)


def _calls_in_vllm(engine: SyncEngine) -> int:
    """Calls waiting on vLLM: each holds one watchdog waiter (``VLLMEngine._until_dead``)."""
    return len(engine.engine._waiters)


def _push_waits_at_the_gate(engine: SyncEngine) -> bool:
    return engine.engine._gate._writer  # set while a push waits for (or holds) the gate


def _settle(engine: SyncEngine) -> None:
    """Let the engine loop run every step it can: a call submitted before reaches the point
    where it waits (the gate waits on the loop, not on a clock)."""

    async def turns() -> None:
        for _ in range(20):
            await asyncio.sleep(0)

    engine.run(turns())


def _assert_all_die(futures: dict[str, Future]) -> None:
    for what, fut in futures.items():
        with pytest.raises(EngineDiedError, match="engine process died") as info:
            fut.result(timeout=HANG_GUARD_S)  # TimeoutError here is the hang this is about
        message = str(info.value)
        assert "\n" not in message, f"{what}: {message!r}"


def test_killed_engine_core_fails_pending_calls(
    own_engine: tuple[SyncEngine, psutil.Process], tiny_policy_model: PolicyValueModel
) -> None:
    engine, core = own_engine
    llm = engine.engine.llm
    assert core.pid == llm.engine_core.resources.engine_manager.processes[0].pid
    prompt = _prompt(engine)
    assert engine.generate(prompt, SAMPLING).samples  # serving

    os.kill(core.pid, signal.SIGSTOP)  # from here on nothing the engine core gets returns
    pending = {"generate in vLLM": engine.submit(engine.engine.generate(prompt, SAMPLING))}
    _wait_until(lambda: _calls_in_vllm(engine) == 1, "generate waits in vLLM")
    # A utility call inside vLLM (collective_rpc, as the "rpc" weight push makes).
    pending["collective_rpc in vLLM"] = engine.submit(engine.engine.weight_checksum())
    _wait_until(lambda: _calls_in_vllm(engine) == 2, "collective_rpc waits in vLLM")
    pending["load_weights at the gate"] = _push_in_thread(engine, tiny_policy_model)
    _wait_until(lambda: _push_waits_at_the_gate(engine), "the push waits at the gate")
    pending["generate behind the push"] = engine.submit(engine.engine.generate(prompt, SAMPLING))
    _settle(engine)
    assert _calls_in_vllm(engine) == 2  # the last generate waits behind the push, not in vLLM
    assert not any(f.done() for f in pending.values())
    os.kill(core.pid, signal.SIGKILL)
    _assert_all_die(pending)

    with pytest.raises(EngineDiedError, match=r"EngineCore \(pid \d+\) killed by SIGKILL"):
        engine.generate(prompt, SAMPLING)
    with pytest.raises(EngineDiedError):
        engine.load_weights(
            tiny_policy_model.lm.state_dict(), tiny_policy_model.value_head.state_dict()
        )
    engine.shutdown()  # still shuts down cleanly


def test_killed_worker_fails_a_weight_push_inside_vllm(
    own_engine: tuple[SyncEngine, psutil.Process], tiny_policy_model: PolicyValueModel
) -> None:
    """The OOM killer's choice: the worker (it holds the model), not the engine core."""
    engine, core = own_engine
    workers = core.children()
    assert len(workers) == 1
    worker = workers[0]
    prompt = _prompt(engine)
    assert engine.generate(prompt, SAMPLING).samples

    os.kill(worker.pid, signal.SIGSTOP)
    pending = {"load_weights in vLLM": _push_in_thread(engine, tiny_policy_model)}
    _wait_until(
        lambda: _push_waits_at_the_gate(engine) and _calls_in_vllm(engine) == 1,
        "the push holds the gate and waits in vLLM",
    )
    pending["generate behind the push"] = engine.submit(engine.engine.generate(prompt, SAMPLING))
    _settle(engine)
    assert _calls_in_vllm(engine) == 1  # the generate waits behind the push
    assert not any(f.done() for f in pending.values())
    os.kill(worker.pid, signal.SIGKILL)
    _assert_all_die(pending)
    with pytest.raises(EngineDiedError):
        engine.generate(prompt, SAMPLING)
    engine.shutdown()


def test_shutdown_leaves_no_process_running_even_a_frozen_worker(
    own_engine: tuple[SyncEngine, psutil.Process],
) -> None:
    """A worker that cannot act on vLLM's shutdown (stopped here; busy or wedged in a run
    stopped under load) used to outlive its engine core as an orphan. (Shutdown waits at
    most ``SHUTDOWN_GRACE_S`` before it kills what is left; no duration is asserted.)"""
    engine, core = own_engine
    ours = [core, *core.children(recursive=True)]
    assert engine.generate(_prompt(engine), SAMPLING).samples
    for worker in ours[1:]:
        os.kill(worker.pid, signal.SIGSTOP)
    engine.shutdown()
    # Killed by shutdown, they are gone as soon as reaped: the timeout is only a hang guard.
    _, alive = psutil.wait_procs(ours, timeout=HANG_GUARD_S)
    assert not alive, f"still running after shutdown: {alive}"
