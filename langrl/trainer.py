"""The training loop: agent rollouts -> buffer -> learner -> weights -> engine, logged.

One loop for every agent (``mcts``, ``cispo``, ``bon``); it reads top to bottom (CleanRL):
set-up, then per gradient step ``rollout``, ``update``, ``sync``, ``eval``, ``logging``,
``checkpoint``.

Sync windows and staleness. Weights are pushed every ``sync_every`` gradient steps, and
before every evaluation; the steps between two pushes form a sync window, trained at one
engine version. A rollout in flight is first allowed to finish, so no sample mixes two
weight versions. Staleness is ``engine version at training time - version that sampled``;
the buffer drops trajectories more than ``max_staleness`` versions old and hands out
what expires at the next push first, then the freshest (highest version; within a version,
the earliest arrivals).

Async mode (default): ``agent.collect`` runs as a coroutine on the engine's event loop
(``SyncEngine.submit``), so the next rollout is generated while the learner trains. It is
sized to need, not submitted every step: after taking a batch, the loop counts what the
remaining steps of this window and of the NEXT one need (``trajectories_needed``), minus
what the buffer holds that can still be trained then, and submits a rollout only for the
shortfall, of ``ceil(shortfall / trajectories per task)`` tasks (``YieldEstimate``: a
running estimate, since CISPO drops zero-variance groups and its yield varies), at most
``tasks_per_rollout``. One rollout is in flight at a time, and a finished one enters the
buffer only when a batch cannot be filled without it or at a push, so older data is used
first. Data sampled in a window is thus trained in it or the next (staleness <= 1) and,
when yields match the estimate, nothing goes stale (``perf/dropped_stale`` stays 0) and
little is left over (generated minus trained trajectories, both logged as ``perf/`` run
totals). Sync mode generates a full rollout whenever the buffer cannot fill a batch, then
trains, in turn.

Budget and cost. ``max_gen_tokens`` stops the run (final push, evaluation and checkpoint,
as at ``total_steps``) once the generated tokens reach it; no rollout is submitted after.
Run totals (``RunTotals``: generated tokens and samples, generated and trained
trajectories, training and evaluation wall seconds) are logged each step as ``perf/*_total``
and ``perf/train_wall_s`` and survive ``resume``.

Validation. ``holdout`` keeps the last problems of the train split from the task sampler;
every evaluation (start, every ``eval_every``, end) appends a row to
``run_dir/eval_history.csv`` (``EvalHistory``: step, run totals, split, k, scores).

Checkpoints (the learner's atomic ``save_checkpoint``) carry, in ``extra``, the global step,
the task sampler's position, the RNG states, the run totals and the run directory, so
``resume`` continues with the same step counter, optimizer state, data position and cost
counters (and ``eval_history.csv`` rows after the resumed step are dropped). Ctrl-C saves
one first.

    python scripts/train_agent.py --agent cispo
    python scripts/train_agent.py --agent cispo --max_gen_tokens 2000000 --holdout 512 \
        --eval.split train --eval.first_problem -512      # budgeted, validated on held-out
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import logging
import math
import random
import time
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from langrl import metrics as tags
from langrl.agents import make_agent
from langrl.agents.evaluation import evaluate_async
from langrl.buffer import TrajectoryBuffer
from langrl.config import ConfigError, TrainConfig
from langrl.learner import Learner, latest_checkpoint
from langrl.metrics import TensorBoardLogger
from langrl.trajectory import Trajectory

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
#: Evaluation history beside the TensorBoard events: one CSV row per evaluation.
EVAL_HISTORY_FILE = "eval_history.csv"


# --- helpers ---


class TaskSampler:
    """Deterministic, resumable order over a data split: a seeded shuffle per epoch.

    ``next(k)`` returns the next ``k`` tasks (``{"index": i}``), crossing into a fresh
    shuffle (seed + epoch) at the end of the split. ``state_dict`` / ``load_state_dict``
    hold (epoch, position), so a resumed run continues the same order. The position counts
    tasks handed to the agent, so tasks handed out but not yet trained at a checkpoint (a
    rollout in flight in async mode, trajectories still buffered) are not replayed on resume.
    """

    def __init__(self, size: int, seed: int) -> None:
        if size < 1:
            raise ValueError(f"TaskSampler.size must be >= 1, got {size}")
        self.size, self.seed = size, seed
        self.epoch, self.position = 0, 0
        self._order = self._shuffle(0)

    def _shuffle(self, epoch: int) -> list[int]:
        return np.random.default_rng([self.seed, epoch]).permutation(self.size).tolist()

    def next(self, k: int) -> list[dict[str, int]]:
        tasks = []
        for _ in range(k):
            if self.position == self.size:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._shuffle(self.epoch)
            tasks.append({"index": self._order[self.position]})
            self.position += 1
        return tasks

    def state_dict(self) -> dict[str, int]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "size": self.size,
            "seed": self.seed,
        }

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        if state["size"] != self.size:
            raise ValueError(
                f"checkpoint's task sampler covered {state['size']} tasks, this run samples "
                f"{self.size} (the train split less holdout): resume with the same split and holdout"
            )
        self.seed, self.epoch, self.position = state["seed"], state["epoch"], state["position"]
        self._order = self._shuffle(self.epoch)


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states, JSON-serialisable (for checkpoint ``extra``)."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    raw = np.frombuffer(base64.b64decode(state["torch"]), dtype=np.uint8).copy()
    torch.set_rng_state(torch.from_numpy(raw))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_run_dir(config: TrainConfig) -> Path:
    """``run_dir``, or a fresh ``{runs_root}/{env}__{agent}__{seed}__{time}``; with ``resume``
    and no ``run_dir``, the newest matching run that holds a checkpoint."""
    if config.run_dir is not None:
        return Path(config.run_dir)
    root = Path(config.runs_root)
    if config.resume:
        prefix = f"{config.env_id}__{config.agent}__{config.seed}__"
        runs = sorted(
            (p for p in root.glob(prefix + "*") if latest_checkpoint(p / CHECKPOINT_DIR)),
            key=lambda p: p.name,
        )
        if not runs:
            raise ConfigError(f"config: resume: no run {prefix}* with a checkpoint under {root}/")
        return runs[-1]
    return root / config.run_name()


def trajectory_text(traj: Trajectory) -> str:
    text = traj.info.get("text")
    return text if isinstance(text, str) else f"<{len(traj.completion_ids)} tokens>"


def rollout_cost(batch: Any) -> tuple[float, float]:
    """``(tokens, samples)`` one rollout generated: what the agent reports (``gen/tokens``,
    ``gen/samples``: every built-in agent does, search and filtered samples included), else
    its trajectories' completion tokens and count (an agent that reports no ``gen/``)."""
    trajs = batch.trajectories
    tokens = batch.metrics.get(tags.GEN_TOKENS, float(sum(len(t.completion_ids) for t in trajs)))
    return float(tokens), float(batch.metrics.get(tags.GEN_SAMPLES, float(len(trajs))))


@dataclass
class RolloutStats:
    """What the trainer logs about the rollouts that finished since the last step."""

    metrics: dict[str, list[float]] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)
    tokens: float = 0.0
    num_samples: float = 0.0
    seconds: float = 0.0
    tasks: list[int] = field(default_factory=list)

    def add(self, batch: Any, seconds: float, num_tasks: int) -> None:
        for key, value in batch.metrics.items():
            self.metrics.setdefault(key, []).append(float(value))
        self.samples.extend(batch.samples)
        tokens, samples = rollout_cost(batch)
        self.tokens += tokens
        self.num_samples += samples
        self.seconds += seconds
        self.tasks.append(num_tasks)

    def summary(self) -> dict[str, float]:
        out = {k: float(np.mean(v)) for k, v in self.metrics.items()}
        if self.seconds > 0:
            out[tags.PERF_TOKENS_PER_S] = self.tokens / self.seconds
            out[tags.PERF_SAMPLES_PER_S] = self.num_samples / self.seconds
            out[tags.PERF_ROLLOUT_S] = self.seconds
        if self.tasks:
            out[tags.PERF_ROLLOUT_TASKS] = float(np.mean(self.tasks))
        return out


@dataclass
class RunTotals:
    """Cumulative cost and use counters of a run, saved in checkpoint ``extra`` (``totals``)
    and restored on resume, so budgets and curves continue across sessions."""

    gen_tokens_total: float = 0.0
    """Tokens generated (``rollout_cost``); ``max_gen_tokens`` is checked against it."""
    gen_samples_total: float = 0.0
    """Completions sampled."""
    generated_trajectories_total: int = 0
    """Trajectories that rollouts handed to the buffer."""
    trained_trajectories_total: int = 0
    """Trajectories the learner trained on."""
    train_wall_s: float = 0.0
    """Wall seconds of the training loop, evaluations excluded."""
    eval_wall_s: float = 0.0
    """Wall seconds spent evaluating (start, periodic, final)."""

    def add_rollout(self, batch: Any) -> None:
        tokens, samples = rollout_cost(batch)
        self.gen_tokens_total += tokens
        self.gen_samples_total += samples
        self.generated_trajectories_total += len(batch.trajectories)

    def state_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, float]) -> RunTotals:
        """Counters from a checkpoint (those it lacks, e.g. from an older version, start at 0)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in state.items() if k in names})

    def scalars(self) -> dict[str, float]:
        return {
            tags.PERF_GEN_TOKENS_TOTAL: self.gen_tokens_total,
            tags.PERF_GEN_SAMPLES_TOTAL: self.gen_samples_total,
            tags.PERF_GENERATED_TRAJECTORIES_TOTAL: float(self.generated_trajectories_total),
            tags.PERF_TRAINED_TRAJECTORIES_TOTAL: float(self.trained_trajectories_total),
            tags.PERF_TRAIN_WALL_S: self.train_wall_s,
        }


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
    ``t % sync_every == 0`` or an evaluation is due (every ``eval_every`` and the last step).
    (A ``max_gen_tokens`` stop also ends one; it cannot be foreseen.)"""

    def __init__(self, total_steps: int, sync_every: int, eval_every: int) -> None:
        self.total_steps, self.sync_every, self.eval_every = total_steps, sync_every, eval_every

    def eval_due(self, step: int) -> bool:
        return step == self.total_steps or (self.eval_every > 0 and step % self.eval_every == 0)

    def sync_due(self, step: int) -> bool:
        return step % self.sync_every == 0 or self.eval_due(step)

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


class EvalHistory:
    """``run_dir/eval_history.csv``: one row per evaluation the trainer runs (columns
    ``EVAL_HISTORY_COLUMNS``, plus ``mean_at_k_ci95`` when the evaluation reports it).

    Written with the ``csv`` module, header once, each row appended and flushed (closed) as
    it comes, so the file can be read while the run goes on. ``keep_through``: on resume,
    the resumed step; rows after it (evaluations of an interrupted session that the run
    will repeat) are dropped by rewriting the file. ``None`` (a fresh run) empties it.
    """

    def __init__(self, path: str | Path, keep_through: int | None = None) -> None:
        self.path = Path(path)
        self._columns: list[str] = []
        self._rows: list[dict[str, Any]] = []
        if keep_through is not None and self.path.is_file():
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                self._columns = list(reader.fieldnames or [])
                self._rows = [r for r in reader if float(r["step"]) <= keep_through]
        self._rewrite()

    def _rewrite(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w", newline="") as f:
            if self._columns:
                writer = csv.DictWriter(f, self._columns, restval="")
                writer.writeheader()
                writer.writerows(self._rows)

    def append(self, row: Mapping[str, Any]) -> None:
        self._rows.append(dict(row))
        new = [k for k in row if k not in self._columns]
        if new:  # the first row, or a column older rows lack: header and all rows again
            self._columns += new
            self._rewrite()
            return
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self._columns, restval="").writerow(row)

    def rows(self) -> list[dict[str, str]]:
        """The rows as the file holds them (strings)."""
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))


#: Columns of ``eval_history.csv`` (``mean_at_k_ci95`` follows when reported).
EVAL_HISTORY_COLUMNS = (
    "step", "gen_tokens_total", "gen_samples_total", "train_wall_s", "eval_split",
    "num_problems", "k", "mean_at_k", "pass_at_k", "format_ok_frac",
)  # fmt: skip


def eval_history_row(
    step: int, totals: RunTotals, split: str, result: Mapping[str, Any]
) -> dict[str, Any]:
    """One ``eval_history.csv`` row from an ``evaluate`` result."""
    row = {
        "step": step,
        "gen_tokens_total": totals.gen_tokens_total,
        "gen_samples_total": totals.gen_samples_total,
        "train_wall_s": round(totals.train_wall_s, 3),
        "eval_split": split,
        "num_problems": int(result[tags.EVAL_NUM_PROBLEMS]),
        "k": int(result["k"]),
        "mean_at_k": result[tags.EVAL_MEAN_AT_K],
        "pass_at_k": result[tags.EVAL_PASS_AT_K],
        "format_ok_frac": result[tags.EVAL_FORMAT_OK_FRAC],
    }
    if tags.EVAL_MEAN_AT_K_CI95 in result:
        row["mean_at_k_ci95"] = result[tags.EVAL_MEAN_AT_K_CI95]
    return row


async def _timed_collect(agent: Any, tasks: list[dict[str, int]]) -> tuple[Any, float]:
    start = time.perf_counter()
    batch = await agent.collect(tasks)
    return batch, time.perf_counter() - start


def default_model(preset: str = "default") -> str:
    """Path of the cached warm-started tiny policy (built on first use: minutes on CPU)."""
    from langrl.tiny import ensure_policy  # imported late: it pulls in transformers

    print(f"model: the tiny {preset} policy (built and cached on first use: minutes)", flush=True)
    return str(ensure_policy(preset))


# --- the loop ---


def train(config: TrainConfig, engine: Any = None) -> dict[str, Any]:
    """Train ``config.agent`` for ``config.total_steps`` gradient steps, or until
    ``config.max_gen_tokens`` are generated; return the final metrics (``step``,
    ``run_dir``, ``policy_version``, the ``RunTotals`` counters, the last ``eval/`` scalars).

    ``engine`` is an existing ``SyncEngine`` serving the SAME initial model as
    ``config.model`` (tests share one per session); ``None`` = start one from
    ``config.engine`` and shut it down at the end. On Ctrl-C a checkpoint is saved and
    ``KeyboardInterrupt`` is re-raised.
    """
    # --- set-up ---
    seed_everything(config.seed)
    run_dir = resolve_run_dir(config)
    ckpt_root = run_dir / CHECKPOINT_DIR
    resume_from = latest_checkpoint(ckpt_root) if config.resume else None
    if config.resume and resume_from is None:
        raise ConfigError(f"config: resume: no checkpoint under {ckpt_root}")
    model = config.model or default_model()
    owns_engine = engine is None
    if owns_engine:
        from langrl.engine import create_engine

        engine = create_engine(replace(config.engine, model=model))
    try:
        return _train(config, engine, model, run_dir, ckpt_root, resume_from)
    finally:
        if owns_engine:
            engine.shutdown()


def _train(
    config: TrainConfig,
    engine: Any,
    model: str,
    run_dir: Path,
    ckpt_root: Path,
    resume_from: Path | None,
) -> dict[str, Any]:
    agent = make_agent(
        config.agent, config.agent_config, config.env_id, config.train_env_kwargs, engine.engine
    )
    learner = Learner(model, config.learner)
    buffer = TrajectoryBuffer(config.buffer_capacity, config.max_staleness)
    # The last ``holdout`` problems of the split are never handed out (validation).
    sampler = TaskSampler(config.train_split_size() - config.holdout, config.seed)
    schedule = SyncSchedule(config.total_steps, config.sync_every, config.eval_every)
    yields = YieldEstimate()
    totals = RunTotals()

    step = 0
    if resume_from is not None:
        step, extra = learner.load_checkpoint(resume_from)
        step = int(extra.get("global_step", step))
        sampler.load_state_dict(extra["sampler"])
        set_rng_state(extra["rng"])
        totals = RunTotals.from_state_dict(extra.get("totals", {}))
        logger.info("resumed from %s at step %d", resume_from, step)
    start_step = step
    version = engine.policy_version
    if resume_from is not None:  # the engine serves the initial model: push the checkpoint
        version = engine.load_weights(*learner.export_weights())

    tb = TensorBoardLogger(
        run_dir, config.to_dict() | {"model": model}, purge_step=step + 1 if resume_from else None
    )
    history = EvalHistory(
        run_dir / EVAL_HISTORY_FILE, keep_through=step if resume_from is not None else None
    )
    eval_kwargs = {**config.env_kwargs}
    clock = time.perf_counter()  # wall time since then is not yet in totals.train_wall_s

    def credit_train_time() -> None:
        nonlocal clock
        now = time.perf_counter()
        totals.train_wall_s += now - clock
        clock = now

    def run_eval(at_step: int) -> dict[str, float]:
        nonlocal clock, last_eval_step
        credit_train_time()
        result = engine.run(
            evaluate_async(
                engine.engine,
                config.env_id,
                eval_kwargs,
                None,
                replace(config.eval, progress=config.progress),
            )
        )
        totals.eval_wall_s += time.perf_counter() - clock
        clock = time.perf_counter()  # evaluation time is not training time
        scalars = {k: float(v) for k, v in result.items() if "/" in k}
        tb.log_scalars(scalars, at_step)
        tb.log_text(tags.TEXT_EVAL_SAMPLES, result["samples"], at_step)
        history.append(eval_history_row(at_step, totals, config.eval.split, result))
        last_eval_step = at_step
        return scalars

    def save(at_step: int) -> Path:
        nonlocal last_save_step
        credit_train_time()
        extra = {
            "global_step": at_step,
            "sampler": sampler.state_dict(),
            "rng": rng_state(),
            "run_dir": str(run_dir),
            "policy_version": version,
            "totals": totals.state_dict(),
        }
        last_save_step = at_step
        return learner.save_checkpoint(ckpt_root, at_step, extra)

    def token_evals_done() -> int:
        # How many multiples of eval_every_tokens the generated tokens have crossed.
        return int(totals.gen_tokens_total // config.eval_every_tokens)

    token_evals = token_evals_done() if config.eval_every_tokens else 0

    def budget_left() -> bool:
        return config.max_gen_tokens is None or totals.gen_tokens_total < config.max_gen_tokens

    pending: tuple[Future, int] | None = None  # the rollout in flight and its task count

    def submit(num_tasks: int) -> None:
        nonlocal pending
        pending = (engine.submit(_timed_collect(agent, sampler.next(num_tasks))), num_tasks)

    def harvest() -> int:
        """Wait for the rollout in flight and buffer it; return its trajectory count."""
        nonlocal pending
        future, num_tasks = pending
        pending = None
        batch, seconds = future.result()
        buffer.put(batch.trajectories)
        rollouts.add(batch, seconds, num_tasks)
        totals.add_rollout(batch)
        yields.update(num_tasks, len(batch.trajectories))
        return len(batch.trajectories)

    def needed(current_step: int, first_step: int) -> int:
        return trajectories_needed(
            schedule,
            buffer,
            current_step=current_step,
            first_step=first_step,
            version=version,
            batch_size=config.batch_size,
            max_staleness=config.max_staleness,
        )

    last_eval: dict[str, float] = {}
    last_eval_step = last_save_step = -1
    last_reward = float("nan")
    if config.eval_at_start and resume_from is None:
        last_eval = run_eval(step)

    rollouts = RolloutStats()
    unsynced = 0  # gradient steps not yet pushed to the engine
    out_of_budget = False  # the budget ran out with too little buffered for another step
    # A token budget is what ends the run then, so the bar counts generated tokens (an ETA
    # over total_steps, an upper bound only, would be meaningless).
    by_tokens = config.max_gen_tokens is not None
    bar = tqdm(total=config.max_gen_tokens if by_tokens else config.total_steps,
               initial=int(totals.gen_tokens_total) if by_tokens else step,
               desc=f"train {config.agent}", unit="tok" if by_tokens else "step",
               unit_scale=by_tokens, disable=not config.progress)  # fmt: skip
    try:
        while step < config.total_steps:
            # --- rollout ---
            # Collect until the buffer holds a batch of fresh trajectories. Async mode sizes
            # the rollout to the steps up to the end of the next window; sync mode, and async
            # mode before any yield is known, hand out a full rollout.
            wait_start = time.perf_counter()
            empty = 0
            while not buffer.ready(config.batch_size, version):
                if pending is None:
                    if not budget_left():
                        out_of_budget = True
                        break
                    tasks = config.rollout_tasks
                    if config.mode == "async":
                        tasks = yields.tasks_for(needed(step + 1, step + 1), tasks)
                    submit(tasks)
                empty = 0 if harvest() else empty + 1
                if empty >= config.max_empty_rollouts:
                    raise RuntimeError(
                        f"{empty} rollouts in a row gave no trajectories (e.g. every CISPO "
                        "group had zero reward variance): the policy never varies its reward; "
                        "warm-start it, raise the group size, or raise max_empty_rollouts"
                    )
            if out_of_budget:
                break
            # Before a push, take what it would make too stale rather than dropping it.
            last_of_window = config.mode == "async" and schedule.sync_due(step + 1)
            expiring_up_to = (
                2 * config.batch_size if config.train_expiring and last_of_window else None
            )
            trajectories = buffer.get(config.batch_size, version, expiring_up_to=expiring_up_to)
            staleness = [version - t.policy_version for t in trajectories]
            # Overlap the update with generating what later steps need, and no more.
            if config.mode == "async" and pending is None and step + 1 < config.total_steps:
                shortfall = needed(step + 1, step + 2)
                if shortfall > 0 and budget_left():
                    submit(yields.tasks_for(shortfall, config.rollout_tasks))
            wait_s = time.perf_counter() - wait_start

            # --- update ---
            update_start = time.perf_counter()
            update_metrics = learner.step(trajectories, current_version=version)
            update_s = time.perf_counter() - update_start
            step += 1
            unsynced += 1
            totals.trained_trajectories_total += len(trajectories)
            final = step == config.total_steps or not budget_left()

            # --- sync ---
            # Let the rollout in flight finish on the old weights first (no sample mixes
            # two versions); its trajectories wait in the buffer, one version stale.
            sync_s = 0.0
            eval_due = final or schedule.eval_due(step)
            if config.eval_every_tokens and token_evals_done() > token_evals:
                # Not foreseen by the schedule: it ends the sync window here.
                token_evals, eval_due = token_evals_done(), True
            if unsynced and (schedule.sync_due(step) or eval_due):
                if pending is not None:
                    harvest()
                sync_start = time.perf_counter()
                version = engine.load_weights(*learner.export_weights())
                sync_s = time.perf_counter() - sync_start
                unsynced = 0

            # --- eval ---
            if eval_due:
                last_eval = run_eval(step)

            # --- logging ---
            if step % config.log_every == 0 or final:
                credit_train_time()
                scalars = {**update_metrics, **rollouts.summary(), **totals.scalars()}
                scalars.update({
                    tags.PERF_STALENESS: float(np.mean(staleness)),
                    tags.PERF_STALENESS_MAX: float(max(staleness)),
                    tags.PERF_DROPPED_STALE: float(buffer.dropped_stale),
                    tags.PERF_BATCH_TRAJECTORIES: float(len(trajectories)),
                    tags.PERF_POLICY_VERSION: float(version),
                    tags.PERF_UPDATE_S: update_s,
                    tags.PERF_WAIT_S: wait_s,
                    tags.PERF_SYNC_S: sync_s,
                    tags.TRAIN_EPOCH: sampler.epoch + sampler.position / sampler.size,
                })  # fmt: skip
                tb.log_scalars(scalars, step)
                if config.text_every and (step % config.text_every == 0 or step == 1):
                    texts = rollouts.samples or [trajectory_text(t) for t in trajectories[:2]]
                    tb.log_text(tags.TEXT_TRAIN_SAMPLES, texts[:4], step)
                rollouts = RolloutStats()
                last_reward = scalars.get(tags.TRAIN_REWARD_MEAN, last_reward)
                postfix = {"reward": last_reward}
                if last_eval:
                    postfix["mean@k"] = last_eval[tags.EVAL_MEAN_AT_K]
                shown = {k: f"{v:.3f}" for k, v in postfix.items()}
                bar.set_postfix({"step": step, **shown} if by_tokens else shown)
            bar.update(min(int(totals.gen_tokens_total), bar.total) - bar.n if by_tokens else 1)

            # --- checkpoint ---
            periodic = config.checkpoint_every and step % config.checkpoint_every == 0
            if final or periodic or (eval_due and config.eval_every_tokens):
                save(step)
            if final:
                break

        # --- budget spent between steps ---
        # The last rollouts crossed the budget without filling another batch: the step just
        # trained is the last one; give it the final push, evaluation and checkpoint.
        if out_of_budget and step > start_step:
            if unsynced:
                version = engine.load_weights(*learner.export_weights())
                unsynced = 0
            if last_eval_step != step:
                last_eval = run_eval(step)
            if last_save_step != step:
                save(step)
    except KeyboardInterrupt:
        bar.close()
        if pending is not None:
            pending[0].cancel()
        path = save(step)
        print(f"\ninterrupted at step {step}; checkpoint saved to {path}", flush=True)
        raise
    finally:
        bar.close()
        tb.close()
    if pending is not None:  # a rollout started for a step that will not come
        pending[0].cancel()
    if out_of_budget:
        logger.info(
            "stopped at step %d: %.0f generated tokens reached max_gen_tokens %d",
            step, totals.gen_tokens_total, config.max_gen_tokens,
        )  # fmt: skip
    return {
        "step": step,
        "run_dir": str(run_dir),
        "policy_version": version,
        **totals.state_dict(),
        **last_eval,
    }
