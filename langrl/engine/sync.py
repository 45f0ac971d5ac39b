"""Blocking front of the async policy server, for trainers, scripts and notebooks.

``SyncEngine`` owns an asyncio event loop running in a background thread and creates the
async engine *on* that loop (vLLM's ``AsyncLLM`` binds to the loop it first runs on).
Blocking methods submit coroutines to the loop and wait; ``run(coro)`` runs any coroutine
there (an agent's ``collect`` with many concurrent MCTS workers, for instance) and
``submit(coro)`` returns a ``concurrent.futures.Future`` so that a trainer can overlap
generation with learning::

    with create_engine(EngineConfig(model="runs/tiny")) as engine:
        gen = engine.generate("3 + 4 =", SamplingConfig(n=4, max_tokens=16))
        future = engine.submit(agent.collect(tasks))   # runs on the engine loop
        learner.step(batch)                            # meanwhile, in this thread
        rollouts = future.result()
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

import torch

from langrl.engine.base import Generation, PolicyEngine, SamplingConfig

T = TypeVar("T")


class SyncEngine:
    """A ``PolicyEngine`` on its own event-loop thread, with blocking methods.

    Args:
        factory: Coroutine function returning the engine, e.g. ``lambda: VLLMEngine.create(cfg)``;
            awaited on the engine loop. Its exceptions (``EngineStartError``) propagate here
            and the loop thread is stopped.
    """

    def __init__(self, factory: Callable[[], Awaitable[PolicyEngine]]) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="langrl-engine-loop", daemon=True
        )
        self._thread.start()
        self._closed = False
        try:
            self._engine: PolicyEngine = self._call(factory())
        except BaseException:
            self._stop_loop()
            raise

    # --- properties ---

    @property
    def engine(self) -> PolicyEngine:
        """The async engine (use it from coroutines passed to ``run``/``submit``)."""
        return self._engine

    @property
    def tokenizer(self) -> Any:
        """The served model's Hugging Face tokenizer."""
        return self._engine.tokenizer

    @property
    def policy_version(self) -> int:
        """Number of weight pushes so far; generations carry the version that made them."""
        return self._engine.policy_version

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The engine's event loop (running in a background thread)."""
        return self._loop

    # --- running coroutines ---

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the engine loop; return a future for its result."""
        if self._closed:
            coro.close()
            raise RuntimeError("the engine was shut down; create a new one")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the engine loop and block until it returns."""
        return self._call(coro)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError(
                "SyncEngine's blocking methods cannot be called from the engine loop; "
                "await the async engine (SyncEngine.engine) there instead"
            )
        return self.submit(coro).result()

    # --- the engine interface, blocking ---

    def generate(self, prompt: Sequence[int] | str, sampling: SamplingConfig) -> Generation:
        """Sample ``sampling.n`` continuations of one prompt."""
        return self.run(self._engine.generate(prompt, sampling))

    def generate_many(
        self, prompts: Sequence[Sequence[int] | str], sampling: SamplingConfig
    ) -> list[Generation]:
        """Sample every prompt concurrently (one request each, batched by the engine)."""

        async def many() -> list[Generation]:
            return list(
                await asyncio.gather(*(self._engine.generate(p, sampling) for p in prompts))
            )

        return self.run(many())

    def score(
        self, prompt_ids: Sequence[int], completions: Sequence[Sequence[int]]
    ) -> list[list[float]]:
        """Raw (T=1) per-token logprobs of each completion given the prompt."""
        return self.run(self._engine.score(prompt_ids, completions))

    def values(self, states: Sequence[Sequence[int]]) -> list[float]:
        """V(s) for each state (token ids)."""
        return self.run(self._engine.values(states))

    def load_weights(
        self,
        lm_state: Mapping[str, torch.Tensor],
        value_head_state: Mapping[str, torch.Tensor],
    ) -> int:
        """Push new weights (waits for in-flight requests); return the new policy version."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("load_weights() blocks; call it outside the engine loop")
        return self._engine.load_weights(lm_state, value_head_state)

    def encode_prompt(self, info: Mapping[str, Any]) -> list[int]:
        """Token ids of an env prompt, chat-templated per ``EngineConfig.use_chat_template``
        (``PolicyEngine.encode_prompt``)."""
        return self._engine.encode_prompt(info)

    def telemetry(self) -> dict[str, float]:
        """The engine's serving scalars (``PolicyEngine.telemetry``), read on its loop."""

        async def read() -> dict[str, float]:
            return self._engine.telemetry()

        return self.run(read())

    # --- lifetime ---

    def shutdown(self) -> None:
        """Shut the engine down and stop the loop thread. Idempotent."""
        if self._closed:
            return

        async def shutdown_on_loop() -> None:
            # On the loop thread: vLLM's shutdown cancels tasks that live on this loop;
            # let them finish cancelling before the loop stops.
            self._engine.shutdown()
            for _ in range(3):
                await asyncio.sleep(0)

        try:
            if threading.current_thread() is self._thread:
                self._engine.shutdown()
            elif self._loop.is_running():
                asyncio.run_coroutine_threadsafe(shutdown_on_loop(), self._loop).result()
            else:
                self._engine.shutdown()
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._closed = True
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> SyncEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __del__(self) -> None:
        # Best effort only; call shutdown() (or use `with`) to release vLLM's processes.
        if not getattr(self, "_closed", True):
            try:
                self.shutdown()
            except Exception:  # noqa: BLE001,S110 - interpreter may be tearing down
                pass
