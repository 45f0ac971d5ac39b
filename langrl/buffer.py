"""The trajectory buffer: the boundary between generation (agents) and learning (learner).

Agents ``put`` Trajectories as rollouts finish; the trainer ``get``s batches of a given size
(larger, on request, by the trajectories that would otherwise expire):
first the trajectories at the staleness bound (the last version they can be trained at is
the current one, so the next weight push would drop them), then the freshest: the highest
``policy_version`` first and, within a version, in arrival order. A batch is therefore as
on-policy as what is held allows without throwing away data that can still be trained
(freshest-first alone drops the surplus of any rollout that yields more than expected; the
planner's ``trajectories_needed`` already counts the expiring ones as consumed first).
Value-only trajectories (``Trajectory.value_only``: outcomes that train the value head
alone) are held apart: they never count towards a batch's size, ``len`` or ``count``, and
``get`` hands every fresh one out with the next batch. The buffer is bounded (the
earliest arrivals are dropped first when full) and enforces off-policyness: a trajectory
sampled by policy version ``v`` is dropped when the learner's version is more than
``max_staleness`` ahead of ``v``. Both kinds of drop are counted. (How much to generate so
that nothing goes stale is the trainer's job: ``count`` tells it what is held.)

It is one of the three boundaries docs/design.md keeps clean (engine client, buffer, learner):
thread-safe with a ``threading.Condition`` so producers on the engine's event-loop thread and
the learner thread can share it, and nothing more; a Ray actor can later stand behind the
same ``put`` / ``get`` without touching agents or the trainer.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from langrl.checks import check_int
from langrl.trajectory import Trajectory


class TrajectoryBuffer:
    """Bounded store of Trajectories with a staleness bound, handing out first what expires
    at the next version, then the freshest.

    Args:
        capacity: Most trajectories held; ``put`` beyond it drops the oldest (counted in
            ``dropped_overflow``). Must be >= 1.
        max_staleness: Largest accepted ``current_version - trajectory.policy_version``;
            older trajectories are dropped at ``get`` time (counted in ``dropped_stale``).
            ``None`` accepts any age.
    """

    def __init__(self, capacity: int = 4096, max_staleness: int | None = None) -> None:
        check_int("TrajectoryBuffer", "capacity", capacity, 1)
        check_int("TrajectoryBuffer", "max_staleness", max_staleness, 0, optional=True)
        self.capacity = capacity
        self.max_staleness = max_staleness
        self._items: deque[Trajectory] = deque()
        self._value_only: deque[Trajectory] = deque()  # same bound, same staleness rule
        self._cond = threading.Condition()
        self.num_put = 0
        self.num_got = 0
        self.dropped_stale = 0
        self.dropped_overflow = 0

    def __len__(self) -> int:
        """Trajectories held for the policy (value-only ones not counted)."""
        with self._cond:
            return len(self._items)

    def put(self, trajectories: Iterable[Trajectory]) -> int:
        """Append trajectories (oldest dropped beyond ``capacity``, which bounds the
        value-only ones separately); return how many were added."""
        added = 0
        with self._cond:
            for traj in trajectories:
                items = self._value_only if traj.value_only else self._items
                items.append(traj)
                added += 1
                if len(items) > self.capacity:
                    items.popleft()
                    self.dropped_overflow += 1
            self.num_put += added
            self._cond.notify_all()
        return added

    def drop_stale(self, current_version: int) -> int:
        """Drop every trajectory more than ``max_staleness`` versions behind; return the count."""
        with self._cond:
            return self._drop_stale_locked(current_version)

    def _drop_stale_locked(self, current_version: int) -> int:
        if self.max_staleness is None:
            return 0
        dropped = 0
        for name in ("_items", "_value_only"):
            items = getattr(self, name)
            kept = [t for t in items if current_version - t.policy_version <= self.max_staleness]
            if len(kept) < len(items):
                dropped += len(items) - len(kept)
                setattr(self, name, deque(kept))
        self.dropped_stale += dropped
        return dropped

    def count(self, min_version: int | None = None) -> int:
        """Policy trajectories held whose ``policy_version >= min_version`` (``None``: all)."""
        with self._cond:
            if min_version is None:
                return len(self._items)
            return sum(t.policy_version >= min_version for t in self._items)

    def ready(self, batch_size: int, current_version: int) -> bool:
        """Whether ``get(batch_size, current_version)`` would return at once (stale ones dropped)."""
        with self._cond:
            self._drop_stale_locked(current_version)
            return len(self._items) >= batch_size

    def get(
        self,
        batch_size: int,
        current_version: int,
        timeout: float | None = 0.0,
        expiring_up_to: int | None = None,
    ) -> list[Trajectory] | None:
        """``batch_size`` trajectories, stale ones dropped first: those exactly
        ``max_staleness`` behind ``current_version`` (trainable now, stale after the next
        push), then the freshest (highest ``policy_version``); within a version, the
        earliest arrivals. ``None`` if that many did not arrive within ``timeout`` seconds
        (``0`` = do not wait, ``None`` = wait forever).

        ``expiring_up_to``: when the expiring ones alone outnumber ``batch_size``, take
        them all, up to this many (for the last step before a weight push, which would
        drop the rest).

        Every value-only trajectory held (fresh enough) follows the batch, in arrival order,
        beyond its size."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if expiring_up_to is not None and expiring_up_to < batch_size:
            raise ValueError(
                f"expiring_up_to must be >= batch_size ({batch_size}), got {expiring_up_to}"
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                self._drop_stale_locked(current_version)
                if len(self._items) >= batch_size:
                    # A stable sort keeps arrival order within a version.
                    order = sorted(
                        range(len(self._items)),
                        key=lambda i: self._priority(self._items[i], current_version),
                    )
                    size = batch_size
                    if expiring_up_to is not None:
                        expiring = sum(self._expiring(t, current_version) for t in self._items)
                        size = max(batch_size, min(expiring, expiring_up_to))
                    taken = set(order[:size])
                    batch = [self._items[i] for i in order[:size]]
                    self._items = deque(t for i, t in enumerate(self._items) if i not in taken)
                    batch += self._value_only
                    self._value_only.clear()
                    self.num_got += len(batch)
                    return batch
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def _expiring(self, traj: Trajectory, current_version: int) -> bool:
        """Trainable at ``current_version``, stale at the next one."""
        return (
            self.max_staleness is not None
            and current_version - traj.policy_version == self.max_staleness
        )

    def _priority(self, traj: Trajectory, current_version: int) -> tuple[bool, int]:
        """Sort key of ``get``: expiring ones first, then by version, newest first."""
        return (not self._expiring(traj, current_version), -traj.policy_version)

    def clear(self) -> None:
        with self._cond:
            self._items.clear()
            self._value_only.clear()

    # --- checkpoints ---

    def state_dict(self, current_version: int) -> dict[str, Any]:
        """What a checkpoint keeps of the buffer, JSON-serialisable: every held trajectory in
        arrival order (ids, logprobs, reward, advantages exactly; ``info`` as JSON) and the
        counters. Versions are stored as ages (``current_version - policy_version``), since a
        resumed run's engine counts its versions afresh: ``load_state_dict`` puts them back
        relative to the version it is given. About 27 bytes per completion token (base64 of
        an int32 id, a float64 logprob and advantage): 28 MB for a full paper-sized CISPO
        rollout (2048 trajectories of 512 tokens), under 200 KB for the tiny preset's."""
        with self._cond:
            return {
                "trajectories": [
                    _encode(t, current_version) for t in (*self._items, *self._value_only)
                ],
                "counters": {
                    "num_put": self.num_put,
                    "num_got": self.num_got,
                    "dropped_stale": self.dropped_stale,
                    "dropped_overflow": self.dropped_overflow,
                },
            }

    def load_state_dict(self, state: Mapping[str, Any], current_version: int) -> None:
        """Replace the contents and counters with a ``state_dict``'s; each trajectory gets
        ``policy_version = current_version - age`` (the staleness it had when saved)."""
        items = [_decode(d, current_version) for d in state["trajectories"]]
        policy = [t for t in items if not t.value_only]
        value_only = [t for t in items if t.value_only]
        with self._cond:
            self._items = deque(policy[-self.capacity :])
            self._value_only = deque(value_only[-self.capacity :])
            counters = state.get("counters", {})
            for name in ("num_put", "num_got", "dropped_stale", "dropped_overflow"):
                setattr(self, name, int(counters.get(name, 0)))
            self.dropped_overflow += len(items) - len(self._items) - len(self._value_only)
            self._cond.notify_all()

    def stats(self) -> dict[str, int]:
        """Counters for logging."""
        with self._cond:
            return {
                "size": len(self._items),
                "value_only": len(self._value_only),
                "put": self.num_put,
                "got": self.num_got,
                "dropped_stale": self.dropped_stale,
                "dropped_overflow": self.dropped_overflow,
            }


# --- checkpoint encoding ---


def _pack(values: Any, dtype: str) -> str:
    # Exact: ids as int32, floats as float64 (Python floats), little-endian, base64.
    return base64.b64encode(np.asarray(values, dtype=dtype).tobytes()).decode("ascii")


def _unpack(text: str, dtype: str) -> list:
    return np.frombuffer(base64.b64decode(text), dtype=dtype).tolist()


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # NumPy and torch scalars
        return obj.item()
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=repr)
    return repr(obj)


def _encode(traj: Trajectory, current_version: int) -> dict[str, Any]:
    return {
        "prompt_ids": _pack(traj.prompt_ids, "<i4"),
        "completion_ids": _pack(traj.completion_ids, "<i4"),
        "behaviour_logprobs": _pack(traj.behaviour_logprobs, "<f8"),
        "reward": float(traj.reward),
        "advantages": None if traj.advantages is None else _pack(traj.advantages, "<f8"),
        "temperature": float(traj.temperature),
        "age": current_version - traj.policy_version,
        "agent": traj.agent,
        "value_only": traj.value_only,
        # Diagnostics only (never trained on): anything JSON cannot hold becomes its repr.
        "info": json.loads(json.dumps(traj.info, default=_json_default)),
    }


def _decode(data: Mapping[str, Any], current_version: int) -> Trajectory:
    advantages = data["advantages"]
    return Trajectory(
        prompt_ids=_unpack(data["prompt_ids"], "<i4"),
        completion_ids=_unpack(data["completion_ids"], "<i4"),
        behaviour_logprobs=_unpack(data["behaviour_logprobs"], "<f8"),
        reward=float(data["reward"]),
        advantages=None if advantages is None else _unpack(advantages, "<f8"),
        temperature=float(data["temperature"]),
        policy_version=current_version - int(data["age"]),
        agent=data["agent"],
        value_only=bool(data.get("value_only", False)),  # absent in older checkpoints
        info=dict(data["info"]),
    )
