"""The RolloutPlanner: what to generate and what each step trains, against a real buffer."""

from __future__ import annotations

import pytest

from langrl.buffer import TrajectoryBuffer
from langrl.training.planner import RolloutPlanner, SyncSchedule
from langrl.trajectory import Trajectory


def _traj(version: int) -> Trajectory:
    return Trajectory([1], [2], [-0.1], 0.0, policy_version=version)


def _planner(mode: str = "async", *, staleness: int | None = 1, expiring: bool = True, **kw):
    buffer = TrajectoryBuffer(256, staleness)
    schedule = SyncSchedule(
        total_steps=kw.pop("total_steps", 8), sync_every=kw.pop("sync_every", 2), eval_every=0
    )
    planner = RolloutPlanner(
        buffer, schedule, batch_size=4, max_tasks=8, mode=mode, train_expiring=expiring
    )
    return planner, buffer


def test_staleness_is_read_from_the_buffer_only():
    planner, buffer = _planner(staleness=3)
    assert planner.max_staleness == 3
    buffer.max_staleness = 1
    assert planner.max_staleness == 1


def test_sync_mode_asks_for_full_rollouts_and_never_ahead():
    planner, _ = _planner("sync")
    planner.observe(8, 32)  # a yield is known: sync mode ignores it
    assert planner.tasks_to_fill(0, version=0) == 8
    assert planner.tasks_ahead(0, version=0) == 0


def test_async_sizes_to_the_next_window_from_the_yield():
    planner, buffer = _planner()
    assert planner.tasks_to_fill(0, version=0) == 8  # no yield known yet: a full rollout
    planner.observe(num_tasks=4, num_trajectories=8)  # 2 trajectories per task
    # Steps 1..4 (this window and the next, sync every 2) need 16: 8 tasks.
    assert planner.tasks_to_fill(0, version=0) == 8
    buffer.put([_traj(0) for _ in range(12)])
    assert planner.tasks_to_fill(0, version=0) == 2  # 4 more trajectories: 2 tasks
    assert planner.tasks_ahead(7, version=0) == 0  # nothing after the last step


def test_take_batch_adds_what_the_push_would_make_stale():
    planner, buffer = _planner()
    buffer.put([_traj(0) for _ in range(6)] + [_traj(1) for _ in range(4)])
    # Step 2 ends a window (sync every 2): at version 1 the version-0 ones expire at the push.
    batch = planner.take_batch(1, version=1)
    assert len(batch) == 6 and all(t.policy_version == 0 for t in batch)
    planner_off, buffer_off = _planner(expiring=False)
    buffer_off.put([_traj(0) for _ in range(6)] + [_traj(1) for _ in range(4)])
    assert len(planner_off.take_batch(1, version=1)) == 4


def test_bad_mode_is_refused():
    with pytest.raises(ValueError, match="RolloutPlanner.mode"):
        _planner("eager")
