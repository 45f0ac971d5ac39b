"""The learner as ``learner.world_size`` data-parallel ranks, each a Ray actor.

``LearnerGroup`` offers what the training loop uses of ``Learner`` (``step``,
``export_weights``, ``save_checkpoint``, ``load_checkpoint``, ``global_step``, ``config``),
so the loop drives N ranks as it drives one learner.

- **Ranks.** Each rank is a Ray actor holding an ordinary ``Learner`` built from the same
  ``model_path`` and seed, so the ranks start with identical weights (a checksum of every
  rank is compared with rank 0's at start and after a load; a difference raises). The ranks
  form one ``torch.distributed`` group (gloo on CPU, NCCL when ``config.device`` is CUDA;
  each CUDA rank reserves one GPU), meeting at a TCP port rank 0 picks on its node.
- **A step.** The batch is put into Ray's object store once and every rank reads the WHOLE
  batch. Each rank sorts it, cuts the same micro-batches and computes the same whole-batch
  normalisers (token or sequence counts) as one process would, then trains only every
  N-th micro-batch (``langrl.learner.data_parallel``). Sending every rank the whole batch
  costs a little CPU for collation, and buys identical normalisers without a gather of
  counts and micro-batches identical to one process's. One all-reduce sums the gradients
  and the metric parts; every rank then clips and steps identically, so the weights stay
  equal without a broadcast. The result equals one learner's step up to float summation
  order (fp32: within 1e-5, measured by ``tests/distributed/test_learner_group.py``).
- **Rank 0** reports the metrics, exports the weights (CPU copies, not aliases) and writes
  checkpoints; every rank loads one. Checkpoint paths are rank 0's (and, for a load, every
  rank's): on a cluster of several nodes they must be on a shared filesystem.
- **Faults.** A rank whose actor dies raises ``RuntimeError`` in one line naming the rank,
  and the group refuses further calls (the other ranks may be stuck in a collective): shut
  it down and resume from the last checkpoint. An exception a rank raises (a bad batch, a
  ``CheckpointError``) is re-raised as itself.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from langrl.distributed import cluster as ray_cluster
from langrl.distributed.config import ClusterConfig
from langrl.learner.config import LearnerConfig

if TYPE_CHECKING:
    import torch

    from langrl.learner.learner import Learner
    from langrl.trajectory import Trajectory

logger = logging.getLogger(__name__)

#: Seconds the ranks' actors get to be scheduled and started (the model load comes after).
START_TIMEOUT_S = 300.0
#: Seconds the other ranks get to finish after one raised, before the group is declared
#: broken (a rank that raised inside a step may leave the others waiting in a collective).
ERROR_GRACE_S = 10.0


def backend_for(device: str) -> str:
    """The ``torch.distributed`` backend for a learner ``device``: NCCL on CUDA, else gloo."""
    return "nccl" if device.startswith("cuda") else "gloo"


def weight_checksum(learner: Learner) -> float:
    """A cheap fingerprint of the trained weights: ``sum_i (i + 1) * sum(param_i)`` in
    float64, so that equal weights give equal numbers and a swapped or changed tensor does
    not (in practice)."""
    import torch

    with torch.no_grad():
        total = torch.zeros((), dtype=torch.float64, device=learner.device)
        for i, param in enumerate(learner.model.parameters()):
            total += (i + 1) * param.detach().double().sum()
    return float(total)


def _is_death(err: BaseException) -> bool:
    """Whether ``err`` says a rank's actor is gone (killed, out of memory, node lost)."""
    from ray.exceptions import ActorUnavailableError, RayActorError

    return isinstance(err, (RayActorError, ActorUnavailableError))


class LearnerRank:
    """The body of one rank's actor (``ray.remote(LearnerRank)``): ``address`` on rank 0,
    then ``start`` on every rank at once (the process group forms when all have called)."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank = rank
        self.world_size = world_size
        self._learner: Learner | None = None

    def address(self) -> tuple[str, int]:
        """This node's IP and a TCP port free on it, where the process group meets."""
        import ray

        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("", 0))
            port = int(sock.getsockname()[1])
        return ray.util.get_node_ip_address(), port

    def start(self, model_path: str, config: LearnerConfig, init_method: str) -> dict[str, Any]:
        """Join the process group, then build the learner; returns pid, node and checksum."""
        import ray
        import torch.distributed as dist

        from langrl.learner.learner import Learner

        dist.init_process_group(
            backend_for(config.device),
            init_method=init_method,
            rank=self.rank,
            world_size=self.world_size,
        )
        self._learner = Learner(model_path, config)
        return {
            "pid": os.getpid(),
            "node": ray.util.get_node_ip_address(),
            "checksum": weight_checksum(self._learner),
        }

    def _ready(self) -> Learner:
        if self._learner is None:
            raise RuntimeError(f"learner rank {self.rank} was not started")
        return self._learner

    def step(
        self, batch: Sequence[Trajectory], current_version: int | None
    ) -> tuple[dict[str, float], int]:
        """``Learner.step`` on the whole batch (this rank trains its share of it)."""
        metrics = self._ready().step(batch, current_version=current_version)
        return metrics, self._ready().global_step

    def export_weights(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``Learner.export_weights`` as CPU tensors (what crosses to the caller is a copy)."""
        lm, head = self._ready().export_weights()
        return (
            {name: t.cpu() for name, t in lm.items()},
            {name: t.cpu() for name, t in head.items()},
        )

    def save_checkpoint(
        self,
        root: str,
        step: int | None,
        extra: Mapping[str, Any] | None,
        keep_last: int | None,
    ) -> Path:
        """``Learner.save_checkpoint`` (rank 0 only: no collective runs)."""
        return self._ready().save_checkpoint(root, step, extra, keep_last)

    def load_checkpoint(self, path: str) -> tuple[tuple[int, dict[str, Any]], int, float]:
        """``Learner.load_checkpoint``; also returns the global step and the new checksum."""
        result = self._ready().load_checkpoint(path)
        return result, self._ready().global_step, weight_checksum(self._ready())


class LearnerGroup:
    """``config.world_size`` data-parallel learner ranks behind ``Learner``'s interface.

    Args:
        model_path: The initial policy, as for ``Learner`` (read by every rank: on several
            nodes, a path each node can read, or a hub id).
        config: The learner's settings; ``world_size`` ranks are started, each reserving
            ``rank_cpus`` CPUs (and one GPU when ``device`` is CUDA).
        cluster: Where Ray runs (``langrl.distributed.cluster.acquire``); default: a local
            instance unless this process is connected to Ray already.

    Raises ``ClusterError`` (Ray missing, too few resources) or ``RuntimeError`` (a rank
    failed to start, or the ranks' initial weights differ) in one line, and leaves no actor
    behind. Use as a context manager, or call ``shutdown()``.

    Attributes:
        config: The ``LearnerConfig`` every rank runs.
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        config: LearnerConfig,
        cluster: ClusterConfig | None = None,
    ) -> None:
        import ray

        self.config = config
        self.model_path = str(model_path)
        self._ranks: list[Any] = []
        self._global_step = 0
        self._broken: str | None = None
        self._closed = False
        cluster = cluster or ClusterConfig()
        self._session = ray_cluster.acquire(cluster)
        try:
            n = config.world_size
            ray_cluster.check_demand(cluster, {"learner.world_size": config.ray_demand()})
            actor = ray.remote(LearnerRank).options(
                num_cpus=config.rank_cpus, num_gpus=config.rank_gpus, max_restarts=0
            )
            self._ranks = [actor.remote(rank, n) for rank in range(n)]
            # Every rank answers first (scheduled, or the timeout says why not): a rank that
            # never starts would leave the others waiting in init_process_group.
            (ip, port), *_ = self._gather(
                [handle.address.remote() for handle in self._ranks], "start", START_TIMEOUT_S
            )
            infos = self._gather(
                [
                    handle.start.remote(self.model_path, config, f"tcp://{ip}:{port}")
                    for handle in self._ranks
                ],
                "start",
            )
            self._check_equal([info["checksum"] for info in infos], "start")
        except BaseException:
            self.shutdown()
            raise
        logger.info(
            "%d learner ranks started (%s): %s", n, backend_for(config.device),
            ", ".join(f"{r} (pid {i['pid']} on {i['node']})" for r, i in enumerate(infos)),
        )  # fmt: skip

    # --- the Learner interface ----------------------------------------------------------------

    @property
    def global_step(self) -> int:
        """Optimiser steps taken (rank 0's count; every rank's is the same)."""
        return self._global_step

    def step(
        self, batch: Sequence[Trajectory], current_version: int | None = None
    ) -> dict[str, float]:
        """``Learner.step`` over all ranks: one optimiser step on ``batch``; rank 0's metrics
        (``langrl.learner.METRIC_TAGS``), which cover the whole batch."""
        import ray

        batch_ref = ray.put(list(batch))  # one copy in the store, read by every rank
        results = self._gather(
            [handle.step.remote(batch_ref, current_version) for handle in self._ranks], "step"
        )
        metrics, self._global_step = results[0]
        return metrics

    def export_weights(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Rank 0's ``(lm_state, value_head_state)`` for ``PolicyEngine.load_weights``: CPU
        tensors, copies (unlike ``Learner.export_weights``, no alias of live weights)."""
        return self._gather([self._ranks[0].export_weights.remote()], "export_weights")[0]

    def save_checkpoint(
        self,
        root: str | os.PathLike,
        step: int | None = None,
        extra: Mapping[str, Any] | None = None,
        keep_last: int | None = None,
    ) -> Path:
        """``Learner.save_checkpoint`` written by rank 0 (all ranks hold the same state);
        returns the checkpoint path (on rank 0's node)."""
        ref = self._ranks[0].save_checkpoint.remote(
            str(root), step, dict(extra) if extra is not None else None, keep_last
        )
        return self._gather([ref], "save_checkpoint")[0]

    def load_checkpoint(self, path: str | os.PathLike) -> tuple[int, dict[str, Any]]:
        """``Learner.load_checkpoint`` on every rank; returns rank 0's ``(step, extra)``.
        Raises ``RuntimeError`` if the ranks' loaded weights differ (not one checkpoint)."""
        results = self._gather(
            [handle.load_checkpoint.remote(str(path)) for handle in self._ranks],
            "load_checkpoint",
        )
        self._check_equal([checksum for _, _, checksum in results], "load_checkpoint")
        result, self._global_step, _ = results[0]
        return result

    # --- lifetime -------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Kill every rank's actor and release the Ray session (idempotent)."""
        if self._closed:
            return
        self._closed = True
        import ray

        for handle in self._ranks:
            with contextlib.suppress(Exception):
                ray.kill(handle, no_restart=True)
        self._session.release()

    def __enter__(self) -> LearnerGroup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    # --- helpers --------------------------------------------------------------------------------

    def _gather(self, refs: list[Any], what: str, timeout: float | None = None) -> list[Any]:
        """The results of ``refs`` (``refs[i]`` is rank ``i``'s call), once all are in. The
        first failure raises: a dead actor as ``RuntimeError`` naming its rank (the group is
        then unusable), an exception a rank raised as that exception."""
        import ray

        self._check_usable()
        rank_of = {ref: rank for rank, ref in enumerate(refs)}
        results: dict[int, Any] = {}
        pending = list(refs)
        deadline = None if timeout is None else time.monotonic() + timeout
        while pending:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, pending = ray.wait(pending, num_returns=1, timeout=left)
            if not done:
                self._broken = f"learner ranks did not answer {what} within {timeout:g} s"
                raise RuntimeError(
                    f"{self._broken}: does the cluster have {self.config.rank_cpus:g} free CPUs "
                    "per rank? lower learner.world_size or learner.rank_cpus"
                )
            rank = rank_of[done[0]]
            try:
                results[rank] = ray.get(done[0])
            except Exception as err:  # noqa: BLE001 - sorted in _fail
                self._fail(rank, err, pending, rank_of, what)
        return [results[rank] for rank in range(len(refs))]

    def _fail(
        self,
        rank: int,
        err: Exception,
        pending: list[Any],
        rank_of: dict[Any, int],
        what: str,
    ) -> None:
        """Raise for ``err`` from ``rank``. A rank's own exception may come from a collective
        whose peer just died (gloo: connection closed), so the other ranks get a moment to
        finish first and a death among them is reported instead, as the cause."""
        import ray

        if not _is_death(err) and pending:
            done, running = ray.wait(pending, num_returns=len(pending), timeout=ERROR_GRACE_S)
            for ref in sorted(done, key=rank_of.__getitem__):
                try:
                    ray.get(ref)
                except Exception as other:  # noqa: BLE001 - only a death matters here
                    if _is_death(other):
                        rank, err = rank_of[ref], other
                        break
            else:
                if running:  # they may be waiting in a collective for this rank
                    self._broken = f"learner rank {rank} failed during {what}"
        if _is_death(err):
            self._broken = f"learner rank {rank} died during {what}"
            detail = " ".join(str(err).split())[:300]
            raise RuntimeError(f"{self._broken}: {type(err).__name__}: {detail}") from None
        cause = getattr(err, "cause", None)  # Ray's task error wraps the rank's exception
        raise (cause if isinstance(cause, Exception) else err) from None

    def _check_usable(self) -> None:
        if self._closed:
            raise RuntimeError("the learner group was shut down; create a new one")
        if self._broken is not None:
            raise RuntimeError(
                f"the learner group is unusable ({self._broken}): shut it down and resume "
                "from the last checkpoint"
            )

    def _check_equal(self, checksums: list[float], when: str) -> None:
        """Raise if any rank's weight checksum differs from rank 0's (relative 1e-9: the
        float64 sum itself may round differently on another machine's CPU)."""
        for rank, value in enumerate(checksums[1:], start=1):
            if not math.isclose(value, checksums[0], rel_tol=1e-9, abs_tol=1e-9):
                raise RuntimeError(
                    f"learner rank {rank}'s weights differ from rank 0's at {when} "
                    f"(checksum {value!r} vs {checksums[0]!r}): every rank must load the "
                    f"same model_path {self.model_path!r}"
                )
