"""The training loop: agent rollouts -> buffer -> learner -> weights -> engine, logged.

One loop for every agent, as a small class whose steps read top to bottom (CleanRL's
banners become methods): ``TrainingRun.__init__`` sets up, then ``run`` repeats per gradient
step ``_fill_buffer`` (rollout), ``learner.step`` (update), ``_sync``, ``evaluate``,
``_log`` and ``save``. What to generate and what each step trains is decided by one
``RolloutPlanner`` (``langrl.training.planner``); what survives a session (task order, run
totals, RNG states, evaluation history) lives in ``langrl.training.state``.

Sync windows and staleness. Weights are pushed every ``sync_every`` gradient steps, and
before every evaluation; the steps between two pushes form a sync window, trained at one
engine version. A rollout in flight is first allowed to finish, so no sample mixes two
weight versions. Staleness is ``engine version at training time - version that sampled``;
the buffer drops trajectories more than ``max_staleness`` versions old and hands out what
expires at the next push first, then the freshest.

Async mode (default): ``agent.collect`` runs as a coroutine on the engine's event loop
(``SyncEngine.submit``), so the next rollout is generated while the learner trains; the
planner sizes it to what the steps up to the end of the NEXT window still need. One rollout
is in flight at a time, and a finished one enters the buffer only when a batch cannot be
filled without it or at a push, so older data is used first. Sync mode generates a full
rollout whenever the buffer cannot fill a batch, then trains, in turn.

Budget and cost. ``max_gen_tokens`` stops the run (final push, evaluation and checkpoint,
as at ``total_steps``) once the generated tokens reach it; no rollout is submitted after.
Run totals are logged each step as ``perf/*_total`` and survive ``resume``. With
``early_stopping_patience`` the run also ends (the same way) at the evaluation that makes
that many in a row without a new best ``mean_at_k``: training to a plateau.

Checkpoints (the learner's atomic ``save_checkpoint``) carry, in ``extra``, the global step,
the task sampler's position, the RNG states, the run totals and the run directory, so
``resume`` continues with the same step counter, optimizer state, data position and cost
counters (``eval_history.csv`` rows after the resumed step are dropped). Ctrl-C saves one
first. They also carry the buffered trajectories, the planner's yield estimate and the
rollout statistics not yet logged, and periodic checkpoints end a sync window, so that a
seeded sync-mode run resumed from one (after a SIGKILL, say) is the run that was not
interrupted: same weights, data and TensorBoard series (docs/design.md, "Reproducibility").
Every task handed to an agent that declares ``task_seeds`` carries a sampling seed from the
run's seed and its place in the data order, and evaluations are seeded per problem.

    python scripts/train_agent.py --agent cispo
    python scripts/train_agent.py --agent cispo --max_gen_tokens 2000000 --holdout 512 \
        --eval.split train --eval.first_problem -512      # budgeted, validated on held-out
"""

from __future__ import annotations

import contextlib
import logging
import time
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from langrl import metrics as tags
from langrl.agents import make_agent
from langrl.agents.evaluation import evaluate_async
from langrl.agents.tree_page import summary_line, write_tree_page
from langrl.buffer import TrajectoryBuffer
from langrl.engine.base import EngineDiedError
from langrl.envs import make_env
from langrl.learner import Learner, latest_checkpoint
from langrl.learner.learner import CheckpointError
from langrl.metrics import TensorBoardLogger
from langrl.signals import reassert_python_handlers
from langrl.training.config import ConfigError, TrainConfig
from langrl.training.planner import RolloutPlanner, SyncSchedule
from langrl.training.state import (
    EVAL_HISTORY_FILE,
    EvalHistory,
    RolloutStats,
    RunTotals,
    TaskSampler,
    eval_history_row,
    evals_without_gain,
    rng_state,
    seed_everything,
    set_rng_state,
    trajectory_text,
)
from langrl.trajectory import Trajectory

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
#: Where a run writes its agent's pages (``RolloutBatch.pages``: MCTS search trees).
TREE_DIR = "trees"


def resolve_run_dir(config: TrainConfig) -> Path:
    """``run_dir``, or a fresh ``{runs_root}/{env}__{agent}__{seed}__{time}``; with ``resume``
    and no ``run_dir``, the newest matching run that holds a checkpoint."""
    if config.run_dir is not None:
        return Path(config.run_dir)
    root = Path(config.runs_root)
    if config.resume:
        prefix = f"{config.env_id}__{config.agent_name}__{config.seed}__"
        # verify=False: this picks the run, not the checkpoint (verified when resuming).
        runs = sorted(
            (p for p in root.glob(prefix + "*") if _has_checkpoint(p / CHECKPOINT_DIR)),
            key=lambda p: p.name,
        )
        if not runs:
            raise ConfigError(f"config: resume: no run {prefix}* with a checkpoint under {root}/")
        return runs[-1]
    return root / config.run_name()


def _policy_count(trajectories: list[Trajectory]) -> int:
    """Trajectories the policy trains on (not ``value_only``)."""
    return sum(not t.value_only for t in trajectories)


def _has_checkpoint(root: Path) -> bool:
    return latest_checkpoint(root, verify=False) is not None


def default_model(preset: str = "default") -> str:
    """Path of the tiny warm-started policy (shipped, or built and cached on first use)."""
    from langrl.tiny import ensure_policy  # imported late: it pulls in transformers

    return str(ensure_policy(preset))


async def _timed_collect(agent: Any, tasks: list[dict[str, int]]) -> tuple[Any, float]:
    start = time.perf_counter()
    batch = await agent.collect(tasks)
    return batch, time.perf_counter() - start


def train(config: TrainConfig, engine: Any = None) -> dict[str, Any]:
    """Train ``config.agent`` for ``config.total_steps`` gradient steps, or until
    ``config.max_gen_tokens`` are generated; return the final metrics (``step``,
    ``run_dir``, ``policy_version``, the ``RunTotals`` counters, the last ``eval/`` scalars).

    ``engine`` is an existing ``SyncEngine`` serving the SAME initial model as
    ``config.model`` (tests share one per session); ``None`` = start one from
    ``config.engine`` and shut it down at the end, however the run ends. On Ctrl-C a
    checkpoint is saved and ``KeyboardInterrupt`` is re-raised.
    """
    config.check_resources()
    run = TrainingRun(config, engine)
    try:
        return run.run()
    finally:
        run.close()


def learner_threads(config: TrainConfig) -> int | None:
    """Torch threads for the trainer's process (``LearnerConfig.num_threads``), or None to
    leave torch's default: not set, a GPU learner, or learner ranks (``rank_cpus``)."""
    learner = config.learner
    if learner.world_size > 1 or not learner.device.startswith("cpu"):
        return None
    return learner.num_threads


class TrainingRun:
    """One training run: set-up in the constructor, the loop in ``run``.

    ``engine``: an existing ``SyncEngine`` serving ``config.model`` (kept running), or
    ``None`` to start one from ``config.engine``, which ``close`` shuts down (so does a
    failing set-up). Attributes a subclass or a test may read: ``config``, ``engine``,
    ``agent``, ``learner``, ``buffer``, ``planner``, ``sampler``, ``totals``, ``step``
    (gradient steps done), ``version`` (the engine's weight version), ``run_dir``.
    """

    def __init__(self, config: TrainConfig, engine: Any = None) -> None:
        self.config = config
        seed_everything(config.seed)
        self.run_dir = resolve_run_dir(config)
        self.ckpt_root = self.run_dir / CHECKPOINT_DIR
        # The newest intact checkpoint: a truncated or corrupt newer one is skipped (warning).
        resume_from = latest_checkpoint(self.ckpt_root) if config.resume else None
        if config.resume and resume_from is None:
            raise ConfigError(f"config: resume: no intact checkpoint under {self.ckpt_root}")
        self.model = config.model or default_model()
        self._threads_before = torch.get_num_threads()  # restored by close()
        threads = learner_threads(config)
        if threads is not None:
            torch.set_num_threads(threads)
        self._owns_engine = engine is None
        if engine is None:
            from langrl.engine import create_engine

            engine = create_engine(replace(config.engine, model=self.model), config.cluster)
        self.engine = engine
        try:
            self._set_up(resume_from)
        except BaseException:
            self.close()
            raise
        # A Ray started for replicas or ranks replaced the SIGTERM handler (signals.py).
        reassert_python_handlers()

    def close(self) -> None:
        """Shut down the learner ranks, and the engine if this run started it (idempotent)."""
        learner = getattr(self, "learner", None)
        if learner is not None and hasattr(learner, "shutdown"):
            learner.shutdown()
        if self._owns_engine and self.engine is not None:
            self.engine.shutdown()
            self.engine = None
        torch.set_num_threads(self._threads_before)

    def _set_up(self, resume_from: Path | None) -> None:
        config = self.config
        self.agent = make_agent(
            config.agent,
            config.agent_config,
            config.env_id,
            config.train_env_kwargs,
            self.engine.engine,
        )
        if config.learner.world_size > 1:  # data-parallel ranks on Ray
            from langrl.distributed.learner_group import LearnerGroup

            self.learner = LearnerGroup(self.model, config.learner, config.cluster)
        else:
            self.learner = Learner(self.model, config.learner)
        self.buffer = TrajectoryBuffer(config.buffer_capacity, config.max_staleness)
        split_size = make_env(config.env_id, config.train_env_kwargs).num_tasks()
        # The last ``holdout`` problems of the split are never handed out (validation).
        self.sampler = TaskSampler(split_size - config.holdout, config.seed)
        # Periodic checkpoints end a sync window: the engine then serves what is saved.
        self.schedule = SyncSchedule(
            config.total_steps, config.sync_every, config.eval_every, config.checkpoint_every
        )
        self.planner = RolloutPlanner(
            self.buffer,
            self.schedule,
            batch_size=config.batch_size,
            max_tasks=config.rollout_tasks,
            mode=config.mode,
            train_expiring=config.train_expiring,
        )
        self.totals = RunTotals()

        self.step = 0
        self.resumed = resume_from is not None
        if resume_from is not None:
            step, extra = self.learner.load_checkpoint(resume_from)
            self.step = int(extra.get("global_step", step))
            self.sampler.load_state_dict(extra["sampler"])
            set_rng_state(extra["rng"])
            self.totals = RunTotals.from_state_dict(extra.get("totals", {}))
            logger.info("resumed from %s at step %d", resume_from, self.step)
        self.start_step = self.step
        self.version = self.engine.policy_version
        self._version_base = self.version  # engine version - run version (pushes of the run)
        # Agents that declare ``task_seeds`` get each task's sampling seed with it.
        self._task_seeds = bool(getattr(type(self.agent), "task_seeds", False))
        self._rollouts = RolloutStats()
        self._page_lines: list[str] = []  # pages written since the last log (search/trees)
        if resume_from is not None:  # the engine serves the initial model: push the checkpoint
            self.version = self.engine.load_weights(*self.learner.export_weights())
            self._restore_run_state(extra)

        self.tb = TensorBoardLogger(
            self.run_dir,
            config.to_dict() | {"model": self.model},
            purge_step=self.step + 1 if self.resumed else None,
        )
        self.history = EvalHistory(
            self.run_dir / EVAL_HISTORY_FILE, keep_through=self.step if self.resumed else None
        )
        self._clock = time.perf_counter()  # wall time since then is not yet in the totals
        self._pending: tuple[Future, int] | None = None  # rollout in flight, its task count
        self._token_evals = self._token_evals_done() if config.eval_every_tokens else 0
        self._unsynced = 0  # gradient steps not yet pushed to the engine
        self.last_eval: dict[str, float] = {}
        self._last_eval_step = self._last_save_step = -1
        self._last_reward = float("nan")
        self.stopped_early = False  # by early_stopping_patience
        self._serving: dict[str, float] = {}  # the engine's last telemetry (replicas)

    # --- the loop ---

    def run(self) -> dict[str, Any]:
        """Train to ``total_steps`` or the token budget; return the final metrics."""
        config = self.config
        if config.eval_at_start and not self.resumed:
            self.evaluate()
        # A token budget is what ends the run then, so the bar counts generated tokens (an
        # ETA over total_steps, an upper bound only, would be meaningless).
        by_tokens = config.max_gen_tokens is not None
        self._bar = tqdm(total=config.max_gen_tokens if by_tokens else config.total_steps,
                         initial=int(self.totals.gen_tokens_total) if by_tokens else self.step,
                         desc=f"train {self.agent_name}", unit="tok" if by_tokens else "step",
                         unit_scale=by_tokens, disable=not config.progress)  # fmt: skip
        out_of_budget = False  # the budget ran out with too little buffered for another step
        try:
            while self.step < config.total_steps:
                # --- rollout ---
                wait_start = time.perf_counter()
                if not self._fill_buffer():
                    out_of_budget = True
                    break
                trajectories = self.planner.take_batch(self.step, self.version)
                staleness = [self.version - t.policy_version for t in trajectories]
                # Overlap the update with generating what later steps need, and no more.
                if self._pending is None:
                    ahead = self.planner.tasks_ahead(self.step, self.version)
                    if ahead and self._budget_left():
                        self._submit(ahead)
                wait_s = time.perf_counter() - wait_start

                # --- update ---
                update_start = time.perf_counter()
                update_metrics = self.learner.step(trajectories, current_version=self.version)
                update_s = time.perf_counter() - update_start
                self.step += 1
                self._unsynced += 1
                # Value-only trajectories ride along beyond batch_size: not counted here.
                self.totals.trained_trajectories_total += _policy_count(trajectories)
                final = self.step == config.total_steps or not self._budget_left()

                # --- sync ---
                eval_due = final or self.schedule.eval_due(self.step)
                if config.eval_every_tokens and self._token_evals_done() > self._token_evals:
                    # Not foreseen by the schedule: it ends the sync window here.
                    self._token_evals, eval_due = self._token_evals_done(), True
                sync_s = 0.0
                if self._unsynced and (self.schedule.sync_due(self.step) or eval_due):
                    sync_s = self._sync()

                # --- eval ---
                if eval_due:
                    self.evaluate()
                    final = final or self._plateaued()

                # --- logging ---
                if self.step % config.log_every == 0 or final:
                    self._log(update_metrics, trajectories, staleness, update_s, wait_s, sync_s)
                self._advance_bar(by_tokens)

                # --- checkpoint ---
                periodic = config.checkpoint_every and self.step % config.checkpoint_every == 0
                if final or periodic or (eval_due and config.eval_every_tokens):
                    self.save(final=final)
                if final:
                    break

            # --- budget spent between steps ---
            # The last rollouts crossed the budget without filling another batch: the step
            # just trained is the last one; give it the final push, evaluation and checkpoint.
            if out_of_budget and self.step > self.start_step:
                if self._unsynced:
                    self._sync()
                if self._last_eval_step != self.step:
                    self.evaluate()
                if self._last_save_step != self.step:
                    self.save()
        except KeyboardInterrupt:
            self._bar.close()
            self._cancel_pending()
            path = self.save()
            print(f"\ninterrupted at step {self.step}; checkpoint saved to {path}", flush=True)
            raise
        except EngineDiedError:
            # Every replica (or the one engine) is gone: keep what was learned, then stop.
            self._bar.close()
            with contextlib.suppress(Exception):
                self._cancel_pending()
            path = self.save()
            logger.error("the engine died at step %d; checkpoint saved to %s", self.step, path)
            raise
        finally:
            self._bar.close()
            self.tb.close()
        self._cancel_pending()  # a rollout started for a step that will not come
        if self.stopped_early:
            logger.info(
                "stopped at step %d: %d evaluations without a gain over the best mean@k "
                "(early_stopping_patience)", self.step, config.early_stopping_patience,
            )  # fmt: skip
        elif out_of_budget:
            logger.info(
                "stopped at step %d: %.0f generated tokens reached max_gen_tokens %d",
                self.step, self.totals.gen_tokens_total, config.max_gen_tokens,
            )  # fmt: skip
        return {
            "step": self.step,
            "run_dir": str(self.run_dir),
            "policy_version": self.version,
            "stopped_early": self.stopped_early,
            **self.totals.state_dict(),
            **self.last_eval,
        }

    # --- rollout ---

    def _fill_buffer(self) -> bool:
        """Collect until the buffer holds a batch fresh enough for the next step; False when
        the token budget ran out first."""
        empty = 0
        while not self.planner.ready(self.version):
            if self._pending is None:
                if not self._budget_left():
                    return False
                self._submit(self.planner.tasks_to_fill(self.step, self.version))
            empty = 0 if self._harvest() else empty + 1
            if empty >= self.config.max_empty_rollouts:
                raise RuntimeError(
                    f"{empty} rollouts in a row gave no trajectories (e.g. every CISPO "
                    "group had zero reward variance): the policy never varies its reward; "
                    "warm-start it, raise the group size, or raise max_empty_rollouts"
                )
        return True

    def _submit(self, num_tasks: int) -> None:
        tasks = self.sampler.next(num_tasks, seeded=self._task_seeds)
        self._pending = (self.engine.submit(_timed_collect(self.agent, tasks)), num_tasks)

    def _harvest(self) -> int:
        """Wait for the rollout in flight and buffer it; return its trajectory count."""
        future, num_tasks = self._pending
        self._pending = None
        batch, seconds = future.result()
        self._write_pages(getattr(batch, "pages", None) or {})
        self.buffer.put(batch.trajectories)
        self.buffer.put(getattr(batch, "value_trajectories", None) or [])
        self._rollouts.add(batch, seconds, num_tasks)
        self.totals.add_rollout(batch)
        self.planner.observe(num_tasks, len(batch.trajectories))
        return len(batch.trajectories)

    def _write_pages(self, pages: dict[str, Any]) -> None:
        """Write a harvested rollout's pages (``RolloutBatch.pages``) to ``run_dir/trees/``
        as ``step_{step}_{name}.json`` and ``.html`` (the step: gradient steps done when the
        rollout came in, so a resumed run, whose agent counts searches from 1 again, does
        not overwrite earlier pages), and note one line each for the ``search/trees`` text
        entry of the next log. A page that cannot be written costs a warning, never the
        run."""
        if not pages:
            return
        for name, tree in pages.items():
            stem = f"step_{self.step:06d}_{name}"
            try:
                path = write_tree_page(tree, self.run_dir / TREE_DIR, stem)
            except (OSError, TypeError, ValueError) as err:  # full disk, or a page not JSON
                logger.warning("could not write tree page %s: %s", stem, err)
                continue
            self._page_lines.append(f"{path.relative_to(self.run_dir)}: {summary_line(tree)}")

    def _cancel_pending(self) -> None:
        if self._pending is not None:
            self._pending[0].cancel()
            self._pending = None

    def _budget_left(self) -> bool:
        budget = self.config.max_gen_tokens
        return budget is None or self.totals.gen_tokens_total < budget

    def _token_evals_done(self) -> int:
        # How many multiples of eval_every_tokens the generated tokens have crossed.
        return int(self.totals.gen_tokens_total // self.config.eval_every_tokens)

    # --- sync ---

    def _sync(self) -> float:
        """Push the learner's weights to the engine; return the seconds the push took. The
        rollout in flight finishes on the old weights first (no sample mixes two versions);
        its trajectories wait in the buffer, one version stale."""
        if self._pending is not None:
            self._harvest()
        start = time.perf_counter()
        self.version = self.engine.load_weights(*self.learner.export_weights())
        self._unsynced = 0
        return time.perf_counter() - start

    # --- eval ---

    def evaluate(self) -> dict[str, float]:
        """mean@k of the served policy at the current step: logged to TensorBoard and
        appended to ``eval_history.csv``; its wall time counts as evaluation, not training."""
        self._credit_train_time()
        config = self.config
        result = self.engine.run(
            evaluate_async(
                self.engine.engine,
                config.env_id,
                dict(config.env_kwargs),
                None,
                # Seeded per problem, by the run's seed unless eval.seed is set: evaluations
                # of the same weights repeat (and so do the eval/ curves of a rerun).
                replace(config.eval, progress=config.progress, seed=self.eval_seed),
            )
        )
        self.totals.eval_wall_s += time.perf_counter() - self._clock
        self._clock = time.perf_counter()
        scalars = {k: float(v) for k, v in result.items() if "/" in k}
        self.tb.log_scalars(scalars, self.step)
        self.tb.log_text(tags.TEXT_EVAL_SAMPLES, result["samples"], self.step)
        self.history.append(eval_history_row(self.step, self.totals, config.eval.split, result))
        self._last_eval_step = self.step
        self.last_eval = scalars
        return scalars

    def _plateaued(self) -> bool:
        """Whether the evaluations so far (``eval_history.csv``, so a resumed run counts the
        ones before it) end in ``early_stopping_patience`` without a gain; sets
        ``stopped_early``."""
        patience = self.config.early_stopping_patience
        if not patience:
            return False
        scores = [float(row["mean_at_k"]) for row in self.history.rows()]
        flat = evals_without_gain(scores, self.config.early_stopping_threshold)
        self.stopped_early = flat >= patience
        return self.stopped_early

    # --- logging ---

    def _log(
        self,
        update_metrics: dict[str, float],
        trajectories: list[Trajectory],
        staleness: list[int],
        update_s: float,
        wait_s: float,
        sync_s: float,
    ) -> None:
        self._credit_train_time()
        scalars = {**update_metrics, **self._rollouts.summary(), **self.totals.scalars()}
        scalars.update({
            tags.PERF_STALENESS: float(np.mean(staleness)),
            tags.PERF_STALENESS_MAX: float(max(staleness)),
            tags.PERF_DROPPED_STALE: float(self.buffer.dropped_stale),
            tags.PERF_BATCH_TRAJECTORIES: float(_policy_count(trajectories)),
            tags.PERF_POLICY_VERSION: float(self.version - self._version_base),
            tags.PERF_UPDATE_S: update_s,
            tags.PERF_WAIT_S: wait_s,
            tags.PERF_SYNC_S: sync_s,
            tags.TRAIN_EPOCH: self.sampler.epoch + self.sampler.position / self.sampler.size,
        })  # fmt: skip
        telemetry = getattr(self.engine, "telemetry", None)  # replicas: perf/replica_*
        self._serving = telemetry() if telemetry is not None else {}
        scalars.update(self._serving)
        self.tb.log_scalars(scalars, self.step)
        text_every = self.config.text_every
        if text_every and (self.step % text_every == 0 or self.step == 1):
            texts = self._rollouts.samples or [trajectory_text(t) for t in trajectories[:2]]
            self.tb.log_text(tags.TEXT_TRAIN_SAMPLES, texts[:4], self.step)
        if self._page_lines:  # already thinned by the agent (tree_every): every one is listed
            self.tb.log_text(tags.TEXT_TREES, ["\n".join(self._page_lines)], self.step)
            self._page_lines = []
        self._rollouts = RolloutStats()
        self._last_reward = scalars.get(tags.TRAIN_REWARD_MEAN, self._last_reward)

    def _advance_bar(self, by_tokens: bool) -> None:
        postfix = {"reward": self._last_reward}
        if self.last_eval:
            postfix["mean@k"] = self.last_eval[tags.EVAL_MEAN_AT_K]
        shown = {k: f"{v:.3f}" for k, v in postfix.items()}
        if tags.PERF_REPLICAS_ALIVE in self._serving:  # replicas alive / started
            alive = self._serving[tags.PERF_REPLICAS_ALIVE]
            shown["replicas"] = f"{alive:.0f}/{self.config.engine.replicas}"
        bar = self._bar
        bar.set_postfix({"step": self.step, **shown} if by_tokens else shown)
        bar.update(min(int(self.totals.gen_tokens_total), bar.total) - bar.n if by_tokens else 1)

    def _credit_train_time(self) -> None:
        now = time.perf_counter()
        self.totals.train_wall_s += now - self._clock
        self._clock = now

    # --- checkpoint ---

    def save(self, final: bool = True) -> Path | None:
        """Checkpoint the learner at the current step with everything ``resume`` needs
        (pruned to ``keep_last``); return its path.

        A failed save (a full disk) leaves the previous checkpoint and ``latest`` intact.
        ``final`` (the run's last save: the end, the budget, Ctrl-C) raises its one-line
        ``CheckpointError``, so the run does not end looking saved; otherwise (a periodic
        save) one warning is logged, training goes on and None is returned: the next save
        tries again, and a resume meanwhile starts from the previous checkpoint.
        """
        self._credit_train_time()
        extra = {
            "global_step": self.step,
            "sampler": self.sampler.state_dict(),
            "rng": rng_state(),
            "run_dir": str(self.run_dir),
            "policy_version": self.version,
            "totals": self.totals.state_dict(),
            **self._run_state(),
        }
        try:
            path = self.learner.save_checkpoint(
                self.ckpt_root, self.step, extra, keep_last=self.config.keep_last
            )
        except CheckpointError as err:
            if final:
                raise
            logger.warning("%s; training goes on (resume would use the previous one)", err)
            return None
        self._last_save_step = self.step
        return path

    def _run_state(self) -> dict[str, Any]:
        """What a checkpoint needs beyond the step, data position, RNGs and totals for a
        resumed sync-mode run to be the run that was not interrupted (docs/design.md,
        "Reproducibility"): the buffered trajectories (their versions as ages), the
        planner's yield estimate, the rollout statistics not yet logged, the run's weight
        version (pushes so far) and the torch thread count the learner ran with."""
        return {
            "run_version": self.version - self._version_base,
            "buffer": self.buffer.state_dict(self.version),
            "yields": self.planner.yields.state_dict(),
            "rollouts": self._rollouts.state_dict(),
            "torch_threads": torch.get_num_threads(),
        }

    def _restore_run_state(self, extra: dict[str, Any]) -> None:
        """Undo ``_run_state`` once the checkpoint's weights are pushed (``self.version``).
        Checkpoints without these keys (older langrl) resume with an empty buffer."""
        # Older checkpoints lack run_version; theirs was the engine's version (a CLI run's
        # own engine counts from 0, so the same number).
        run_version = extra.get("run_version", extra.get("policy_version", 0))
        self._version_base = self.version - int(run_version)
        if "buffer" in extra:
            self.buffer.load_state_dict(extra["buffer"], self.version)
        if "yields" in extra:
            self.planner.yields.load_state_dict(extra["yields"])
        if "rollouts" in extra:
            self._rollouts = RolloutStats.from_state_dict(extra["rollouts"])
        threads = extra.get("torch_threads")
        if threads is not None and threads != torch.get_num_threads():
            logger.warning(
                "the run trained with %d torch threads, this session has %d: its results will "
                "differ from an uninterrupted run in the last bits, growing with the steps "
                "(set OMP_NUM_THREADS=%d or torch.set_num_threads for an exact resume)",
                threads, torch.get_num_threads(), threads,
            )  # fmt: skip

    @property
    def eval_seed(self) -> int:
        """The evaluations' per-problem seed base: ``eval.seed``, else the run's ``seed``."""
        return self.config.seed if self.config.eval.seed is None else self.config.eval.seed

    @property
    def agent_name(self) -> str:
        return self.config.agent_name
