"""The shared policy server: one engine, many concurrent callers.

``create_engine(EngineConfig(model=path))`` starts the configured backend (vLLM by default,
plain transformers with ``backend="hf"``) on a background event loop and returns a
``SyncEngine``: blocking ``generate``/``generate_many``/``score``/``values``/``load_weights``,
plus ``run``/``submit`` to execute agent coroutines on the engine loop, where they await the
async ``PolicyEngine`` (``SyncEngine.engine``) concurrently. Logprob conventions are in
``langrl.engine.base``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from langrl.distributed.config import ClusterConfig
from langrl.engine.base import (
    EngineDiedError,
    Generation,
    PolicyEngine,
    Sample,
    SamplingConfig,
)
from langrl.engine.config import EngineConfig, EngineStartError

if TYPE_CHECKING:
    from langrl.engine.sync import SyncEngine

__all__ = [
    "EngineConfig",
    "EngineDiedError",
    "EngineStartError",
    "Generation",
    "HFEngine",
    "PolicyEngine",
    "Sample",
    "SamplingConfig",
    "SyncEngine",
    "VLLMEngine",
    "create_engine",
    "start_served_engine",
]


def create_engine(config: EngineConfig, cluster: ClusterConfig | None = None) -> SyncEngine:
    """Start the policy server described by ``config``; shut it down with ``.shutdown()``
    (or use it as a context manager). Raises ``EngineStartError`` (one line) on failure.

    With ``config.replicas`` > 1 or a ``cluster`` address, the server is N replicas on Ray
    (``langrl.distributed.replicated_engine``) behind the same interface; ``cluster`` says
    where Ray runs (default: a local instance, stopped with the engine)."""
    from langrl.engine.sync import SyncEngine

    cluster = cluster or ClusterConfig()
    replicated = cluster.uses_ray(config.replicas)
    if replicated:
        from langrl.distributed.cluster import require_ray

        require_ray(f"engine.replicas={config.replicas}")
    if config.backend == "vllm":
        from langrl.engine.vllm_engine import require_vllm

        require_vllm()  # before the loop thread starts: the plain error, nothing to clean up
    if replicated:
        from langrl.distributed.replicated_engine import ReplicatedEngine

        return SyncEngine(lambda: ReplicatedEngine.create(config, cluster))
    return SyncEngine(lambda: start_served_engine(config))


async def start_served_engine(config: EngineConfig) -> PolicyEngine:
    """Create the configured backend as one engine on the running event loop: what
    ``create_engine`` runs in this process and every engine replica runs in its actor."""
    if config.backend == "vllm":
        from langrl.engine.vllm_engine import VLLMEngine

        return await VLLMEngine.create(config)
    from langrl.engine.hf_engine import HFEngine

    return await HFEngine.create(config)


def __getattr__(name: str) -> object:
    # Backends and the blocking front load lazily: importing langrl.engine (or its config)
    # must not import vLLM or torch (configs are parsed before anything heavy starts).
    if name == "SyncEngine":
        from langrl.engine.sync import SyncEngine

        return SyncEngine
    if name == "VLLMEngine":
        from langrl.engine.vllm_engine import VLLMEngine

        return VLLMEngine
    if name == "HFEngine":
        from langrl.engine.hf_engine import HFEngine

        return HFEngine
    raise AttributeError(f"module 'langrl.engine' has no attribute {name!r}")
