"""The replicated engine client on a real local Ray with fake replicas: routing, the push
gate and versions, replica faults (retried, nothing lost or doubled), bad input.

Each replica is a real Ray actor in its own process holding a ``FakeEngine``
(``fake_engine.py``), so the routing, the object-store push and the fault handling under
test are the real ones; only the engine inside is fake."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import fake_engine
import pytest
import torch

ray = pytest.importorskip("ray")

from langrl.distributed import cluster as ray_cluster  # noqa: E402
from langrl.distributed.cluster import ClusterError  # noqa: E402
from langrl.distributed.config import ClusterConfig  # noqa: E402
from langrl.distributed.replicated_engine import ReplicatedEngine  # noqa: E402
from langrl.engine import EngineConfig, EngineDiedError, SamplingConfig, create_engine  # noqa: E402
from langrl.engine.base import same_replica  # noqa: E402
from langrl.engine.sync import SyncEngine  # noqa: E402

pytestmark = pytest.mark.timeout(300)

SAMPLING = SamplingConfig(n=1, max_tokens=4)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One real local Ray instance for the module (about 5 s)."""
    ray.cloudpickle.register_pickle_by_value(fake_engine)  # actors need not import tests/
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def start(model: Path, replicas: int = 2, **kwargs: float) -> SyncEngine:
    replace_dead = bool(kwargs.pop("replace_dead_replicas", False))
    config = EngineConfig(
        model=str(model), replicas=replicas, replica_cpus=0.5, replace_dead_replicas=replace_dead
    )
    factory = fake_engine.FakeFactory(**kwargs)
    return SyncEngine(lambda: ReplicatedEngine.create(config, ClusterConfig(), factory))


def served_by(generation) -> tuple[int, float]:  # noqa: ANN001
    pid, weight = generation.samples[0].text.split()
    return int(pid), float(weight)


def push(engine: SyncEngine, value: float) -> int:
    return engine.load_weights({"w": torch.full((4,), value / 4)}, {})


def running(pids: list[int]) -> list[int]:
    """The pids still running (the dashboard's state API is not started in tests)."""
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        alive.append(pid)
    return alive


def cpus_free_again(total: float = 2.0, timeout_s: float = 20.0) -> bool:
    """Whether every CPU reservation (actors, placement groups) was given back."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ray.available_resources().get("CPU", 0.0) >= total:
            return True
        time.sleep(0.2)
    return False


def test_calls_in_one_search_stay_on_one_replica_others_spread(local_ray, tiny_policy_path):
    with start(tiny_policy_path, delay_s=0.2) as engine:
        pids = {r.info["pid"] for r in engine.engine.replicas}
        assert len(pids) == 2 and os.getpid() not in pids

        async def search(k: int) -> set[int]:
            with same_replica():
                gens = await asyncio.gather(
                    *(engine.engine.generate([k, i], SAMPLING) for i in range(4))
                )
                more = await engine.engine.generate([k], SAMPLING)  # later call, same tree
            return {served_by(g)[0] for g in [*gens, more]}

        async def searches() -> list[set[int]]:
            return list(await asyncio.gather(*(search(k) for k in range(6))))

        per_search = engine.run(searches())
        assert all(len(s) == 1 for s in per_search)  # each tree on one replica
        assert {p for s in per_search for p in s} == pids  # and the trees spread over both

        # Unkeyed concurrent calls go to the least busy replica: an even split.
        gens = engine.generate_many([[i] for i in range(8)], SAMPLING)
        assert sorted(Counter(served_by(g)[0] for g in gens).values()) == [4, 4]
        tele = engine.telemetry()
        assert tele["perf/replicas_alive"] == 2
        assert tele["perf/replica_0/requests"] + tele["perf/replica_1/requests"] == 6 * 5 + 8
        assert tele["perf/replica_0/generated_tokens"] > 0
        assert 0 < tele["perf/replica_0/busy_share"] <= 1


def test_push_reaches_every_replica_before_the_version_moves(local_ray, tiny_policy_path):
    with start(tiny_policy_path, delay_s=0.5, push_delay_s=0.5) as engine:
        assert engine.policy_version == 0
        before = engine.submit(_generate_all(engine, 4))  # in flight when the push starts
        time.sleep(0.1)
        pushing = engine.submit(engine.engine.load_weights_async({"w": torch.ones(4)}, {}))
        time.sleep(0.1)
        assert engine.policy_version == 0  # not until every replica confirmed
        after = engine.submit(_generate_all(engine, 4))  # issued during the push: held back
        assert pushing.result() == 1 and engine.policy_version == 1
        old, new = before.result(), after.result()
        # Calls in flight finished on the old weights and version, later ones on the new,
        # on both replicas: no generation mixes versions.
        assert {(served_by(g)[1], g.policy_version) for g in old} == {(0.0, 0)}
        assert {(served_by(g)[1], g.policy_version) for g in new} == {(4.0, 1)}
        assert len({served_by(g)[0] for g in new}) == 2
        assert engine.values([[1], [2]]) == [4.0, 4.0]
        assert engine.telemetry()["perf/replica_1/push_s"] >= 0.5


async def _generate_all(engine: SyncEngine, n: int) -> list:
    return list(await asyncio.gather(*(engine.engine.generate([i], SAMPLING) for i in range(n))))


def test_engine_errors_reach_the_caller_as_their_own_type(local_ray, tiny_policy_path):
    with start(tiny_policy_path) as engine:
        with pytest.raises(ValueError, match="fake engine: bad prompt"):
            engine.generate([fake_engine.FakeEngine.RAISE], SAMPLING)
        assert engine.telemetry()["perf/replicas_alive"] == 2  # not a replica fault


def test_a_replica_killed_mid_call_is_retried_on_the_other(local_ray, tiny_policy_path, caplog):
    with start(tiny_policy_path, delay_s=1.0) as engine:
        push(engine, 8.0)
        victim, survivor = engine.engine.replicas
        calls = engine.submit(_generate_all(engine, 8))
        time.sleep(0.4)  # all 8 are in flight, 4 on each replica
        assert victim.in_flight == 4
        ray.kill(victim.handle, no_restart=True)
        gens = calls.result(timeout=60)
        # Every call answered exactly once, the dead replica's by the survivor, on the
        # pushed weights.
        assert len(gens) == 8
        assert sorted(g.prompt_ids[0] for g in gens) == list(range(8))
        assert {served_by(g) for g in gens} == {(survivor.info["pid"], 8.0)}
        assert "engine replica 0" in caplog.text and "left the rotation" in caplog.text
        tele = engine.telemetry()
        assert tele["perf/replicas_alive"] == 1 and tele["perf/replicas_lost_total"] == 1
        assert push(engine, 12.0) == 2  # pushes go on with the replica left
        assert served_by(engine.generate([1], SAMPLING)) == (survivor.info["pid"], 12.0)
        ray.kill(survivor.handle, no_restart=True)
        deadline = time.monotonic() + 30  # ray.kill lands asynchronously
        with pytest.raises(EngineDiedError, match="every engine replica died"):
            while time.monotonic() < deadline:
                engine.generate([1], SAMPLING)
                time.sleep(0.2)


def test_a_dead_replica_is_replaced_with_the_current_weights(local_ray, tiny_policy_path):
    with start(tiny_policy_path, replace_dead_replicas=True) as engine:
        push(engine, 4.0)
        victim = engine.engine.replicas[0]
        ray.kill(victim.handle, no_restart=True)
        # Calls find it dead (ray.kill lands asynchronously) and are retried; then the
        # replacement starts and joins.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            engine.generate_many([[i] for i in range(4)], SAMPLING)
            current = engine.engine.replicas[0]
            if current is not victim and current.alive:
                break
            time.sleep(0.5)
        replacement = engine.engine.replicas[0]
        assert replacement.alive and replacement.info["pid"] != victim.info["pid"]
        gens = engine.generate_many([[i] for i in range(8)], SAMPLING)
        assert {served_by(g)[1] for g in gens} == {4.0}  # it serves the pushed weights
        assert {served_by(g)[0] for g in gens} == {r.info["pid"] for r in engine.engine.replicas}


def test_shutdown_leaves_no_actor(local_ray, tiny_policy_path):
    engine = start(tiny_policy_path)
    pids = [r.info["pid"] for r in engine.engine.replicas]
    assert running(pids) == pids
    engine.shutdown()
    deadline = time.monotonic() + 20
    while running(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert running(pids) == []
    assert cpus_free_again()


def test_bad_cluster_input_is_one_line_before_anything_starts(local_ray, tiny_policy_path):
    with pytest.raises(ValueError, match="EngineConfig.replicas must be an integer >= 1"):
        EngineConfig(model=str(tiny_policy_path), replicas=0)
    with pytest.raises(ValueError, match="ClusterConfig.address"):
        ClusterConfig(address="not an address")
    # More replicas than the cluster's CPUs: refused before any actor starts.
    config = EngineConfig(model=str(tiny_policy_path), replicas=3, replica_cpus=1)
    with pytest.raises(ClusterError, match=r"engine\.replicas .* need 3 CPUs.* offers 2"):
        ray_cluster.check_demand(ClusterConfig(address="auto"), {"engine.replicas": (3.0, 0.0)})
    with pytest.raises(ClusterError, match="need 3 CPUs"):
        create_engine(config, ClusterConfig())
    assert cpus_free_again()


def test_unreachable_address_and_missing_ray_are_one_line(monkeypatch):
    # A closed local port: refused within the timeout, in one line.
    cluster = ClusterConfig(address="127.0.0.1:9", connect_timeout_s=2)
    with pytest.raises(ClusterError, match=r"cannot reach '127.0.0.1:9'") as err:
        ray_cluster.check_reachable(cluster)
    assert "\n" not in str(err.value)
    monkeypatch.setattr(ray_cluster.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ClusterError, match=r"engine.replicas=2 needs Ray, which is not installed"):
        create_engine(EngineConfig(model="x", replicas=2))


def test_a_blocking_push_on_the_engine_loop_is_refused(local_ray, tiny_policy_path):
    with start(tiny_policy_path) as engine:

        async def push_on_loop() -> int:
            return engine.engine.load_weights({"w": torch.ones(4)}, {})

        with pytest.raises(RuntimeError, match="load_weights\\(\\) blocks"):
            engine.run(push_on_loop())
        assert engine.policy_version == 0
