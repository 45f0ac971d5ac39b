"""Rollout planning: which steps end a sync window, how many tasks to hand the agent, and
which buffered trajectories a step trains (see ``RolloutPlanner``)."""

from __future__ import annotations

import math

from langrl.buffer import TrajectoryBuffer
from langrl.trajectory import Trajectory


class YieldEstimate:
    """Running estimate of trajectories per task, from the rollouts that finished.

    Sums of tasks and trajectories, both decayed by ``decay`` per rollout: recent rollouts
    count most (CISPO's yield changes as the policy learns which groups vary), and a
    one-task rollout moves the estimate less than a full one.
    """

    def __init__(self, decay: float = 0.5) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"YieldEstimate.decay must be in [0, 1), got {decay}")
        self.decay = decay
        self._tasks = 0.0
        self._trajectories = 0.0

    def update(self, num_tasks: int, num_trajectories: int) -> None:
        self._tasks = self.decay * self._tasks + num_tasks
        self._trajectories = self.decay * self._trajectories + num_trajectories

    def state_dict(self) -> dict[str, float]:
        return {"tasks": self._tasks, "trajectories": self._trajectories}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self._tasks, self._trajectories = float(state["tasks"]), float(state["trajectories"])

    @property
    def per_task(self) -> float | None:
        """Expected trajectories per task; ``None`` before any rollout finished."""
        return self._trajectories / self._tasks if self._tasks > 0 else None

    def tasks_for(self, num_trajectories: int, max_tasks: int) -> int:
        """Tasks expected to yield ``num_trajectories``, in ``[1, max_tasks]``; ``max_tasks``
        while nothing is known (no rollout yet, or none yielded anything)."""
        per_task = self.per_task
        if not per_task:
            return max_tasks
        return max(1, min(max_tasks, math.ceil(num_trajectories / per_task)))


class SyncSchedule:
    """Which steps end a sync window: after step ``t`` the loop pushes weights when
    ``t % sync_every == 0``, an evaluation is due (every ``eval_every`` and the last step)
    or a periodic checkpoint is (every ``checkpoint_every``; 0 = none), so that a checkpoint
    always finds the engine serving the learner's weights and a resume, which pushes them,
    continues as the run would have. (A ``max_gen_tokens`` stop also ends one; it cannot be
    foreseen.)"""

    def __init__(
        self, total_steps: int, sync_every: int, eval_every: int, checkpoint_every: int = 0
    ) -> None:
        self.total_steps, self.sync_every, self.eval_every = total_steps, sync_every, eval_every
        self.checkpoint_every = checkpoint_every

    def eval_due(self, step: int) -> bool:
        return step == self.total_steps or (self.eval_every > 0 and step % self.eval_every == 0)

    def checkpoint_due(self, step: int) -> bool:
        return self.checkpoint_every > 0 and step % self.checkpoint_every == 0

    def sync_due(self, step: int) -> bool:
        return step % self.sync_every == 0 or self.eval_due(step) or self.checkpoint_due(step)

    def window_end(self, step: int) -> int:
        """The last step of the window holding ``step`` (the first sync step >= it)."""
        while step < self.total_steps and not self.sync_due(step):
            step += 1
        return min(step, self.total_steps)


def trajectories_needed(
    schedule: SyncSchedule,
    buffer: TrajectoryBuffer,
    *,
    current_step: int,
    first_step: int,
    version: int,
    batch_size: int,
    max_staleness: int | None,
) -> int:
    """How many more trajectories steps ``first_step`` .. the end of the NEXT sync window
    need beyond what ``buffer`` holds that can still be trained then (negative: a surplus).

    ``current_step`` is the step being trained (or about to be) at engine ``version``; its
    window ends at ``schedule.window_end(current_step)``. Only one window ahead: a rollout
    submitted now samples at ``version`` and is at most 1 stale there, and generating for
    later windows would train staler data (or lose it to ``max_staleness``). Held
    trajectories older than ``version + 1 - max_staleness`` would be stale in the next
    window, so they count only up to what the rest of this window consumes.
    """
    end = schedule.window_end(current_step)
    horizon = schedule.window_end(end + 1) if end < schedule.total_steps else end
    need = batch_size * (horizon - first_step + 1)
    buffer.drop_stale(version)
    lasting = buffer.count(None if max_staleness is None else version + 1 - max_staleness)
    expiring = buffer.count() - lasting
    return need - lasting - min(expiring, batch_size * max(end - first_step + 1, 0))


class RolloutPlanner:
    """The one place that decides what to generate and what to train, against the buffer.

    It owns rollout sizing (``tasks_to_fill``, ``tasks_ahead``: from the sync schedule, the
    buffer's contents and the running ``YieldEstimate``), staleness (the buffer's
    ``max_staleness``, read from the buffer and nowhere else) and expiry (``take_batch``:
    before a push, the batch also takes what the push would make too stale, up to twice
    ``batch_size``, when ``train_expiring``). The training run executes its decisions: it
    submits rollouts, harvests them into the buffer and reports their yields (``observe``).

    Sync mode always asks for a full rollout (``max_tasks``) when the buffer cannot fill a
    batch and never generates ahead. Async mode sizes to the steps up to the end of the NEXT
    sync window (``trajectories_needed``), so data sampled in a window is trained in it or
    the next one (staleness <= 1).

    Engine replicas plug in here: a planner that knows several engines may keep several
    rollouts in flight; learner ranks change only ``batch_size`` (the global batch).
    """

    def __init__(
        self,
        buffer: TrajectoryBuffer,
        schedule: SyncSchedule,
        *,
        batch_size: int,
        max_tasks: int,
        mode: str,
        train_expiring: bool,
        yields: YieldEstimate | None = None,
    ) -> None:
        if mode not in ("async", "sync"):
            raise ValueError(f"RolloutPlanner.mode must be 'async' or 'sync', got {mode!r}")
        self.buffer, self.schedule = buffer, schedule
        self.batch_size, self.max_tasks = batch_size, max_tasks
        self.mode, self.train_expiring = mode, train_expiring
        self.yields = yields or YieldEstimate()

    @property
    def max_staleness(self) -> int | None:
        """The buffer's bound on ``version at training - version that sampled``."""
        return self.buffer.max_staleness

    def ready(self, version: int) -> bool:
        """The buffer holds a batch that is fresh enough to train at ``version``."""
        return self.buffer.ready(self.batch_size, version)

    def needed(self, current_step: int, first_step: int, version: int) -> int:
        """``trajectories_needed`` for this run's schedule, buffer and batch size."""
        return trajectories_needed(
            self.schedule,
            self.buffer,
            current_step=current_step,
            first_step=first_step,
            version=version,
            batch_size=self.batch_size,
            max_staleness=self.max_staleness,
        )

    def tasks_to_fill(self, steps_done: int, version: int) -> int:
        """Tasks of a rollout submitted because the buffer cannot fill the next batch: a full
        rollout in sync mode (and in async mode while no yield is known), else what the
        steps up to the end of the next window still need."""
        if self.mode == "sync":
            return self.max_tasks
        return self.yields.tasks_for(self.needed(steps_done + 1, steps_done + 1, version),
                                     self.max_tasks)  # fmt: skip

    def tasks_ahead(self, steps_done: int, version: int) -> int:
        """Async mode, after the batch of step ``steps_done + 1`` is taken: tasks of a rollout
        to generate while it trains (0 = none needed; always 0 in sync mode and before the
        last step)."""
        if self.mode != "async" or steps_done + 1 >= self.schedule.total_steps:
            return 0
        shortfall = self.needed(steps_done + 1, steps_done + 2, version)
        return self.yields.tasks_for(shortfall, self.max_tasks) if shortfall > 0 else 0

    def take_batch(self, steps_done: int, version: int) -> list[Trajectory]:
        """The batch of step ``steps_done + 1``: ``batch_size`` trajectories, plus, on the last
        step before a push in async mode with ``train_expiring``, those the push would make
        too stale (at most ``2 * batch_size`` in all)."""
        last_of_window = self.mode == "async" and self.schedule.sync_due(steps_done + 1)
        expiring_up_to = 2 * self.batch_size if self.train_expiring and last_of_window else None
        return self.buffer.get(self.batch_size, version, expiring_up_to=expiring_up_to)

    def observe(self, num_tasks: int, num_trajectories: int) -> None:
        """A rollout of ``num_tasks`` tasks yielded ``num_trajectories`` trajectories."""
        self.yields.update(num_tasks, num_trajectories)
