"""A ``PolicyEngine`` over N engine replicas (``engine.replicas``), each a Ray actor.

Agents, evaluation and the training loop talk to this client exactly as to one engine; it
lives on the trainer's engine loop (``SyncEngine``), like the single engine it replaces.

- **Routing.** Calls made inside ``same_replica()`` (one MCTS tree's) go to the replica that
  took the block's first call, which then holds the tree's prefixes in its cache. Other
  calls go to the replica with the fewest calls in flight (then the fewest served).
- **Weights.** A push serialises the weights once (``ray.put`` of numpy arrays, which every
  replica on a node reads from shared memory), loads them on every replica concurrently,
  and moves ``policy_version`` only when every live replica has confirmed. A client-side
  gate holds new calls while a push runs and lets the push wait for calls in flight, so
  every ``Generation`` comes from one version on every replica (Ray does not keep the order
  of calls into an async actor, so the order is kept here). Generations carry the client's
  version: a replacement replica counts its own pushes from 0.
  (On GPUs vLLM's ``nccl`` weight transfer from the learner would avoid the object store;
  it is not built yet: no GPU here to test it on.)
- **Faults.** A replica whose actor dies (killed, out of memory) or whose engine reports
  ``EngineDiedError`` leaves the rotation: a warning names it, ``perf/replicas_lost_total``
  counts it, and each of its calls in flight is retried once more on the replicas left, so
  the caller gets exactly one answer (no trajectory lost or doubled). With
  ``engine.replace_dead_replicas`` a replacement starts, takes the current weights, then
  joins. With no replica left every call raises ``EngineDiedError``.
- **Telemetry** (``telemetry()``, logged under ``perf/``): replicas alive and lost, and per
  replica requests, generated tokens, busy share since the last read and last push time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from langrl import metrics as tags
from langrl.distributed import cluster as ray_cluster
from langrl.distributed.config import ClusterConfig
from langrl.distributed.replica import EngineFactory, EngineReplica, ServedEngineFactory, to_wire
from langrl.engine.base import (
    EngineDiedError,
    Generation,
    PolicyEngine,
    SamplingConfig,
    route_key,
)
from langrl.engine.common import WeightGate, push_blocking
from langrl.engine.config import EngineConfig, EngineStartError

logger = logging.getLogger(__name__)

#: Most ``same_replica`` keys remembered (least recently used dropped first).
MAX_ROUTE_KEYS = 65536
#: Seconds to wait for a replica's resources before giving up (``EngineStartError``).
PLACEMENT_TIMEOUT_S = 120.0
#: Seconds a replica gets to stop its engine at shutdown before its actor is killed.
SHUTDOWN_TIMEOUT_S = 30.0


@dataclass
class Replica:
    """The client's view of one replica: its actor and counters."""

    index: int
    handle: Any
    placement_group: Any
    info: dict[str, Any] = field(default_factory=dict)
    alive: bool = True
    in_flight: int = 0
    requests: int = 0
    generated_tokens: int = 0
    push_s: float = 0.0
    busy_s: float = 0.0  # since the last telemetry read
    _busy_since: float | None = None

    def begin(self) -> None:
        if self.in_flight == 0:
            self._busy_since = time.perf_counter()
        self.in_flight += 1
        self.requests += 1

    def end(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self._busy_since is not None:
            self.busy_s += time.perf_counter() - self._busy_since
            self._busy_since = None

    def take_busy(self, now: float) -> float:
        """Busy seconds since the last call (an open busy stretch is split at ``now``)."""
        busy = self.busy_s
        if self._busy_since is not None:
            busy += now - self._busy_since
            self._busy_since = now
        self.busy_s = 0.0
        return busy


def _replica_death(err: BaseException) -> str | None:
    """Why ``err`` means the replica is gone (its actor or its engine died), else ``None``."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    if isinstance(err, (ActorDiedError, RayActorError, ActorUnavailableError)):
        return f"its actor died ({type(err).__name__})"
    if isinstance(err, EngineDiedError):  # Ray's task error subclasses the cause's class
        return f"its engine died ({' '.join(str(getattr(err, 'cause', err)).split())[:200]})"
    return None


def _unwrap(err: BaseException) -> BaseException:
    """The exception a replica's engine raised (``ValueError``, ``PromptTooLongError``),
    not Ray's wrapper around it, so callers catch what a single engine raises."""
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, BaseException) else err


class ReplicatedEngine(PolicyEngine):
    """``PolicyEngine`` over ``config.replicas`` Ray actors. Create with
    ``await ReplicatedEngine.create(config, cluster)`` on the loop that will use it
    (``create_engine`` does this when ``engine.replicas`` > 1 or a cluster is set)."""

    def __init__(
        self,
        config: EngineConfig,
        tokenizer: Any,
        replicas: list[Replica],
        session: Any,
        factory: EngineFactory,
    ) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.policy_version = 0
        self.replicas = replicas
        self._session = session
        self._factory = factory
        self._loop = asyncio.get_running_loop()
        self._gate = WeightGate()
        self._routes: OrderedDict[Hashable, Replica] = OrderedDict()
        self._weights: tuple[Any, Any] | None = None  # object refs of the last push
        self._replacing: set[asyncio.Task[None]] = set()
        self._lost = 0
        self._closed = False
        self._telemetry_at = time.perf_counter()

    @property
    def use_chat_template(self) -> bool:  # type: ignore[override]
        return self.config.use_chat_template

    # --- start ---

    @classmethod
    async def create(
        cls,
        config: EngineConfig,
        cluster: ClusterConfig | None = None,
        factory: EngineFactory | None = None,
    ) -> ReplicatedEngine:
        """Start (or join) Ray, check its resources, start ``config.replicas`` replicas
        concurrently. ``factory`` builds each replica's engine (default: the configured
        backend). Raises ``EngineStartError`` or ``ClusterError`` (one line) and leaves no
        actor behind on failure."""
        from langrl.engine.common import check_model_path

        cluster = cluster or ClusterConfig()
        config = check_model_path(config)
        session = await asyncio.to_thread(ray_cluster.acquire, cluster)
        replicas: list[Replica] = []
        try:
            await asyncio.to_thread(
                ray_cluster.check_demand, cluster, {"engine.replicas": config.ray_demand(_on_gpu())}
            )
            tokenizer = await asyncio.to_thread(_load_tokenizer, config)
            factory = factory or ServedEngineFactory(config)
            started = await asyncio.gather(
                *(_start_replica(i, config, factory) for i in range(config.replicas)),
                return_exceptions=True,
            )
            replicas = [r for r in started if isinstance(r, Replica)]
            errors = [e for e in started if isinstance(e, BaseException)]
            if errors:
                raise errors[0]
        except BaseException:
            for replica in replicas:
                _stop_replica(replica)
            session.release()
            raise
        engine = cls(config, tokenizer, replicas, session, factory)
        logger.info(
            "%d engine replicas started: %s", len(replicas),
            ", ".join(f"{r.index} (pid {r.info.get('pid')} on {r.info.get('node')})"
                      for r in replicas),
        )  # fmt: skip
        return engine

    # --- routing and calls ---

    def alive(self) -> list[Replica]:
        """The replicas in the rotation."""
        return [r for r in self.replicas if r.alive]

    def _pick(self, key: Hashable | None) -> Replica:
        alive = self.alive()
        if not alive:
            raise EngineDiedError(
                f"every engine replica died ({self._lost} lost of {len(self.replicas)} started)"
            )
        if key is not None:
            chosen = self._routes.get(key)
            if chosen is not None and chosen.alive:
                self._routes.move_to_end(key)
                return chosen
        chosen = min(alive, key=lambda r: (r.in_flight, r.requests, r.index))
        if key is not None:
            self._routes[key] = chosen
            if len(self._routes) > MAX_ROUTE_KEYS:
                self._routes.popitem(last=False)
        return chosen

    async def _call(self, method: str, *args: Any) -> tuple[Replica, Any]:
        """Run ``method`` on one replica, retrying on another while replicas die."""
        self._check_open()
        key = route_key()
        async with self._gate.shared():
            while True:
                replica = self._pick(key)
                replica.begin()
                try:
                    return replica, await getattr(replica.handle, method).remote(*args)
                except Exception as err:  # noqa: BLE001 - sorted below
                    reason = _replica_death(err)
                    if reason is None:
                        raise _unwrap(err) from None
                    self._lose(replica, reason)
                finally:
                    replica.end()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the engine was shut down; create a new one")

    async def generate(self, prompt: Sequence[int] | str, sampling: SamplingConfig) -> Generation:
        replica, generation = await self._call("generate", prompt, sampling)
        generation.policy_version = self.policy_version  # unchanged while the call ran
        replica.generated_tokens += sum(len(s.token_ids) for s in generation.samples)
        return generation

    async def score(
        self, prompt_ids: Sequence[int], completions: Sequence[Sequence[int]]
    ) -> list[list[float]]:
        return (await self._call("score", list(prompt_ids), [list(c) for c in completions]))[1]

    async def values(self, states: Sequence[Sequence[int]]) -> list[float]:
        return (await self._call("values", [list(s) for s in states]))[1]

    # --- faults ---

    def _lose(self, replica: Replica, reason: str) -> None:
        if not replica.alive:
            return
        replica.alive = False
        self._lost += 1
        left = len(self.alive())
        logger.warning(
            "engine replica %d (pid %s) left the rotation: %s; %d of %d replicas serve on%s",
            replica.index, replica.info.get("pid"), reason, left, len(self.replicas),
            ", a replacement is starting" if self.config.replace_dead_replicas else "",
        )  # fmt: skip
        _stop_replica(replica, graceful=False)
        if self.config.replace_dead_replicas and not self._closed:
            task = self._loop.create_task(self._replace(replica.index))
            self._replacing.add(task)
            task.add_done_callback(self._replacing.discard)

    async def _replace(self, index: int) -> None:
        try:
            replica = await _start_replica(index, self.config, self._factory)
        except Exception as err:  # noqa: BLE001 - the run goes on without it
            logger.warning("could not start a replacement for engine replica %d: %s", index, err)
            return
        async with self._gate.exclusive():  # no push may run between its load and joining
            if self._closed:
                _stop_replica(replica, graceful=False)
                return
            if self._weights is not None:
                try:
                    await replica.handle.load_weights.remote(*self._weights)
                except Exception as err:  # noqa: BLE001
                    logger.warning("replacement replica %d could not load weights: %s", index, err)
                    _stop_replica(replica, graceful=False)
                    return
            position = next(i for i, r in enumerate(self.replicas) if r.index == index)
            self.replicas[position] = replica
        logger.warning("engine replica %d replaced (pid %s)", index, replica.info.get("pid"))

    # --- weights ---

    def load_weights(
        self,
        lm_state: Mapping[str, torch.Tensor],
        value_head_state: Mapping[str, torch.Tensor],
    ) -> int:
        """Blocking push from any thread but the engine loop (``load_weights_async``)."""
        return push_blocking(
            self._loop, lambda: self.load_weights_async(lm_state, value_head_state)
        )

    async def load_weights_async(
        self,
        lm_state: Mapping[str, torch.Tensor],
        value_head_state: Mapping[str, torch.Tensor],
    ) -> int:
        """Push to every replica; the new version once all live ones confirmed."""
        import ray

        self._check_open()
        # Serialised once, outside the gate (calls keep flowing meanwhile).
        refs = await asyncio.to_thread(
            lambda: (ray.put(to_wire(lm_state)), ray.put(to_wire(value_head_state)))
        )
        async with self._gate.exclusive():
            targets = self.alive()
            results = await asyncio.gather(
                *(self._push_one(r, refs) for r in targets), return_exceptions=True
            )
            for replica, result in zip(targets, results, strict=True):
                if isinstance(result, BaseException):
                    reason = _replica_death(result)
                    if reason is None:  # bad names or shapes: the same on every replica
                        raise _unwrap(result)
                    self._lose(replica, reason)
            if not self.alive():
                raise EngineDiedError(
                    f"every engine replica died during a weight push ({self._lost} lost)"
                )
            self._weights = refs
            self.policy_version += 1
            return self.policy_version

    async def _push_one(self, replica: Replica, refs: tuple[Any, Any]) -> int:
        start = time.perf_counter()
        version = await replica.handle.load_weights.remote(*refs)
        replica.push_s = time.perf_counter() - start
        return int(version)

    # --- telemetry and lifetime ---

    def telemetry(self) -> dict[str, float]:
        now = time.perf_counter()
        span = max(now - self._telemetry_at, 1e-9)
        self._telemetry_at = now
        out = {
            tags.PERF_REPLICAS_ALIVE: float(len(self.alive())),
            tags.PERF_REPLICAS_LOST_TOTAL: float(self._lost),
        }
        for r in self.replicas:
            busy = min(1.0, r.take_busy(now) / span) if r.alive else 0.0
            out[tags.replica_tag(r.index, "requests")] = float(r.requests)
            out[tags.replica_tag(r.index, "generated_tokens")] = float(r.generated_tokens)
            out[tags.replica_tag(r.index, "busy_share")] = busy
            out[tags.replica_tag(r.index, "push_s")] = r.push_s
        return out

    def shutdown(self) -> None:
        """Stop every replica (its engine, then its actor) and release Ray. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for task in list(self._replacing):
            task.cancel()
        import ray

        live = [r for r in self.replicas if r.alive]
        refs = []
        for replica in live:
            with contextlib.suppress(Exception):
                refs.append(replica.handle.shutdown.remote())
        if refs:
            with contextlib.suppress(Exception):
                ray.wait(refs, num_returns=len(refs), timeout=SHUTDOWN_TIMEOUT_S)
        for replica in live:
            _stop_replica(replica, graceful=False)
            replica.alive = False
        self._weights = None
        self._session.release()


# --- helpers ----------------------------------------------------------------------------------


def _on_gpu() -> bool:
    """Whether replicas take GPUs: the cluster has some (a CPU trainer may drive GPU
    replicas on other nodes)."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0)) > 0


def _load_tokenizer(config: EngineConfig) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(config.tokenizer_path)


async def _start_replica(index: int, config: EngineConfig, factory: EngineFactory) -> Replica:
    """Reserve a placement group (CPUs, and ``tensor_parallel_size`` GPUs on one node), start
    the actor in it and its engine; ``EngineStartError`` naming the replica on failure."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    gpus = config.replica_gpus(_on_gpu())
    bundle = {"CPU": float(config.replica_cpus)} | ({"GPU": float(gpus)} if gpus else {})
    group = placement_group([bundle], strategy="STRICT_PACK")
    try:
        await asyncio.wait_for(group.ready(), PLACEMENT_TIMEOUT_S)
    except Exception as err:  # noqa: BLE001 - a timeout or Ray's refusal: one line
        remove_placement_group(group)
        raise EngineStartError(
            f"engine replica {index}: the cluster could not reserve {bundle} within "
            f"{PLACEMENT_TIMEOUT_S:g} s ({type(err).__name__}); lower engine.replicas or "
            "engine.replica_cpus"
        ) from None
    actor_cls = ray.remote(EngineReplica)
    handle = actor_cls.options(
        num_cpus=config.replica_cpus,
        num_gpus=gpus,
        scheduling_strategy=PlacementGroupSchedulingStrategy(group, 0),
        max_restarts=0,
    ).remote(index)
    replica = Replica(index=index, handle=handle, placement_group=group)
    try:
        replica.info = await asyncio.wait_for(
            handle.start.remote(factory), config.startup_timeout_s
        )
    except asyncio.TimeoutError:
        _stop_replica(replica, graceful=False)
        raise EngineStartError(
            f"engine replica {index} did not start within EngineConfig.startup_timeout_s="
            f"{config.startup_timeout_s:g} s"
        ) from None
    except Exception as err:  # noqa: BLE001 - one line naming the replica
        _stop_replica(replica, graceful=False)
        cause = _unwrap(err)
        detail = " ".join(str(cause).split())[:400]
        raise EngineStartError(
            f"engine replica {index} failed to start: {type(cause).__name__}: {detail}"
        ) from None
    return replica


def _stop_replica(replica: Replica, graceful: bool = True) -> None:
    """Kill the actor (its engine's processes die with it) and free its reservation."""
    import ray
    from ray.util.placement_group import remove_placement_group

    if graceful:
        with contextlib.suppress(Exception):
            ray.get(replica.handle.shutdown.remote(), timeout=SHUTDOWN_TIMEOUT_S)
    with contextlib.suppress(Exception):
        ray.kill(replica.handle, no_restart=True)
    with contextlib.suppress(Exception):
        remove_placement_group(replica.placement_group)
