"""Starting or joining Ray for a run, and checking what the cluster offers.

One hold (``acquire``) per user (the replicated engine, the learner group); Ray starts with the
first and, if the run started it, stops with the last ``release()``. A run that finds Ray
already initialised (a notebook, a test's cluster) uses it and leaves it running.

Nothing outlives the trainer (``langrl.engine.lifetime``): before a local Ray instance
starts, this process's ownership token is set and its reaper runs, so the instance's
processes (GCS, raylet, the workers holding replicas and ranks) carry the token and are
killed if the trainer dies without stopping them. Actors on a joined cluster get the token
too (``runtime_env``) and are, besides, owned by this driver: Ray stops them when it exits.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import threading
from typing import Any

from langrl.distributed.config import ClusterConfig
from langrl.engine.lifetime import Hold

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'ray==2.60.0' (bash scripts/setup.sh installs it)"


class ClusterError(RuntimeError):
    """Ray is missing, the cluster cannot be reached, or it lacks the resources asked for.
    One line, raised before any engine or learner rank starts."""


def ray_installed() -> bool:
    """Whether ``import ray`` would work (without importing it)."""
    return importlib.util.find_spec("ray") is not None


def require_ray(what: str) -> None:
    """``ClusterError`` naming ``what`` (the setting that needs Ray) if Ray is not installed."""
    if not ray_installed():
        raise ClusterError(f"{what} needs Ray, which is not installed: {INSTALL_HINT}")


def local_cpus(cluster: ClusterConfig) -> int:
    """CPUs a local Ray instance started for ``cluster`` offers."""
    return cluster.num_cpus or os.cpu_count() or 1


def check_demand(cluster: ClusterConfig, demands: dict[str, tuple[float, float]]) -> None:
    """Refuse, in one line, a demand the cluster cannot meet: ``demands`` maps the setting
    that asks (``engine.replicas``) to its ``(CPUs, GPUs)``. For a local instance this reads
    the machine (nothing starts); for a joined cluster, the cluster's total resources."""
    if cluster.joins:
        import ray

        total = ray.cluster_resources()
        cpus, gpus = float(total.get("CPU", 0)), float(total.get("GPU", 0))
        where = f"the cluster at {cluster.address!r}"
    else:
        cpus, gpus = float(local_cpus(cluster)), float(local_gpus())
        where = "a local Ray instance on this machine"
    need_cpu = sum(c for c, _ in demands.values())
    need_gpu = sum(g for _, g in demands.values())
    asked = " + ".join(f"{name} ({c:g} CPU, {g:g} GPU)" for name, (c, g) in demands.items())
    if need_cpu > cpus + 1e-9:
        raise ClusterError(
            f"{asked} need {need_cpu:g} CPUs, {where} offers {cpus:g} "
            "(lower engine.replicas / learner.world_size, or engine.replica_cpus)"
        )
    if need_gpu > gpus + 1e-9:
        raise ClusterError(f"{asked} need {need_gpu:g} GPUs, {where} offers {gpus:g}")


def local_gpus() -> int:
    """CUDA GPUs this machine has (0 without torch or CUDA)."""
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch / no CUDA: no GPUs
        return 0


# --- the session ----------------------------------------------------------------------------

_lock = threading.Lock()
_users = 0
_started_here = False
_supervision: Any = None


def acquire(cluster: ClusterConfig) -> Hold:
    """Connect this process to Ray as ``cluster`` says (start a local instance or join one),
    unless it is connected already. ``ClusterError`` (one line) if Ray is missing or the
    address cannot be reached."""
    global _users, _started_here, _supervision
    require_ray("a Ray cluster (engine.replicas > 1, learner.world_size > 1 or cluster.address)")
    import ray

    from langrl.engine import lifetime

    with _lock:
        if ray.is_initialized():
            _users += 1
            return Hold(_release)
        # Before Ray starts anything: its processes inherit the token; the reaper watches.
        supervision = lifetime.acquire()
        env = {"env_vars": lifetime.owner_env()}
        try:
            if cluster.joins:
                check_reachable(cluster)
                ray.init(
                    address=cluster.address, runtime_env=env, log_to_driver=False,
                    logging_level=logging.WARNING,
                )  # fmt: skip
            else:
                store = cluster.object_store_gib
                ray.init(
                    num_cpus=local_cpus(cluster),
                    object_store_memory=int(store * 2**30) if store else None,
                    include_dashboard=False, log_to_driver=False, runtime_env=env,
                    logging_level=logging.WARNING,
                )  # fmt: skip
        except ClusterError:
            supervision.release()
            raise
        except Exception as err:  # noqa: BLE001 - Ray's ConnectionError and friends
            supervision.release()
            what = f"cluster.address={cluster.address!r}" if cluster.joins else "a local Ray"
            raise ClusterError(
                f"could not start or join {what}: {type(err).__name__}: {' '.join(str(err).split())[:300]}"
            ) from None
        _users, _started_here, _supervision = 1, not cluster.joins, supervision
        if cluster.joins:
            logger.info("joined the Ray cluster at %s", cluster.address)
        return Hold(_release)


def check_reachable(cluster: ClusterConfig) -> None:
    """``ClusterError`` unless a ``host:port`` address answers a TCP connect within the
    timeout (Ray itself would retry for minutes); ``auto`` is left to Ray, which fails at
    once when nothing runs."""
    address = cluster.address or ""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), cluster.connect_timeout_s):
            pass
    except OSError as err:
        raise ClusterError(
            f"cluster.address: cannot reach {address!r} within "
            f"{cluster.connect_timeout_s:g} s ({err.strerror or err}); is `ray start --head` "
            "running there?"
        ) from None


def _release() -> None:
    global _users, _started_here, _supervision
    import ray

    with _lock:
        _users = max(0, _users - 1)
        if _users:
            return
        started, supervision = _started_here, _supervision
        _started_here, _supervision = False, None
    if started and ray.is_initialized():
        ray.shutdown()
    if supervision is not None:
        supervision.release()
