"""The training loop: agent rollouts -> buffer -> learner -> weights -> engine, logged.

One loop for every agent (``mcts``, ``cispo``, ``bon``); it reads top to bottom (CleanRL):
set-up, then per gradient step ``rollout``, ``update``, ``sync``, ``eval``, ``logging``,
``checkpoint``.

Async mode (default): ``agent.collect`` runs as a coroutine on the engine's event loop
(``SyncEngine.submit``), so the next rollout is generated while the learner trains on the
current batch. Weights are pushed every ``sync_every`` gradient steps; the rollout in flight
is first allowed to finish, so no sample mixes two weight versions. Staleness is
``engine version at training time - version that sampled``; the buffer drops trajectories
more than ``max_staleness`` versions old. Sync mode generates, then trains, in turn.

Checkpoints (the learner's atomic ``save_checkpoint``) carry, in ``extra``, the global step,
the task sampler's position, the RNG states and the run directory, so ``resume`` continues
with the same step counter, optimizer state and data position. Ctrl-C saves one first.

    python scripts/train_agent.py --agent cispo
"""

from __future__ import annotations

import base64
import logging
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
                f"checkpoint's task sampler covered {state['size']} tasks, this split has {self.size}"
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


def split_size(env_id: str, env_kwargs: Mapping[str, Any]) -> int:
    """Number of tasks in the env's data split (the env loads it on first use)."""
    from langrl.agents._sampling import make_env

    return len(make_env(env_id, env_kwargs)._dataset())


def trajectory_text(traj: Trajectory) -> str:
    text = traj.info.get("text")
    return text if isinstance(text, str) else f"<{len(traj.completion_ids)} tokens>"


@dataclass
class RolloutStats:
    """What the trainer logs about the rollouts that finished since the last step."""

    metrics: dict[str, list[float]] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)
    tokens: float = 0.0
    num_samples: float = 0.0
    seconds: float = 0.0

    def add(self, batch: Any, seconds: float) -> None:
        for key, value in batch.metrics.items():
            self.metrics.setdefault(key, []).append(float(value))
        self.samples.extend(batch.samples)
        # Agents that report what they generated (gen/*) are credited with it; otherwise
        # count the trajectories they returned (MCTS: the chosen paths).
        trajs = batch.trajectories
        self.tokens += batch.metrics.get(
            tags.GEN_TOKENS, float(sum(len(t.completion_ids) for t in trajs))
        )
        self.num_samples += batch.metrics.get(tags.GEN_SAMPLES, float(len(trajs)))
        self.seconds += seconds

    def summary(self) -> dict[str, float]:
        out = {k: float(np.mean(v)) for k, v in self.metrics.items()}
        if self.seconds > 0:
            out[tags.PERF_TOKENS_PER_S] = self.tokens / self.seconds
            out[tags.PERF_SAMPLES_PER_S] = self.num_samples / self.seconds
            out[tags.PERF_ROLLOUT_S] = self.seconds
        return out


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
    """Train ``config.agent`` for ``config.total_steps`` gradient steps; return the final
    metrics (``step``, ``run_dir``, the last ``eval/`` scalars).

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
    sampler = TaskSampler(split_size(config.env_id, config.train_env_kwargs), config.seed)

    step = 0
    if resume_from is not None:
        step, extra = learner.load_checkpoint(resume_from)
        step = int(extra.get("global_step", step))
        sampler.load_state_dict(extra["sampler"])
        set_rng_state(extra["rng"])
        logger.info("resumed from %s at step %d", resume_from, step)
    version = engine.policy_version
    if resume_from is not None:  # the engine serves the initial model: push the checkpoint
        version = engine.load_weights(*learner.export_weights())

    tb = TensorBoardLogger(
        run_dir, config.to_dict() | {"model": model}, purge_step=step + 1 if resume_from else None
    )
    eval_kwargs = {**config.env_kwargs}

    def run_eval(at_step: int) -> dict[str, float]:
        result = engine.run(
            evaluate_async(
                engine.engine,
                config.env_id,
                eval_kwargs,
                None,
                replace(config.eval, progress=config.progress),
            )
        )
        scalars = {k: v for k, v in result.items() if "/" in k}
        tb.log_scalars(scalars, at_step)
        tb.log_text(tags.TEXT_EVAL_SAMPLES, result["samples"], at_step)
        return scalars

    def save(at_step: int) -> Path:
        extra = {
            "global_step": at_step,
            "sampler": sampler.state_dict(),
            "rng": rng_state(),
            "run_dir": str(run_dir),
            "policy_version": version,
        }
        return learner.save_checkpoint(ckpt_root, at_step, extra)

    def submit_rollout() -> Future:
        return engine.submit(_timed_collect(agent, sampler.next(config.rollout_tasks)))

    last_eval: dict[str, float] = {}
    last_reward = float("nan")
    if config.eval_at_start and resume_from is None:
        last_eval = run_eval(step)

    pending: Future | None = None
    rollouts = RolloutStats()
    unsynced = 0  # gradient steps not yet pushed to the engine
    bar = tqdm(total=config.total_steps, initial=step, desc=f"train {config.agent}",
               unit="step", disable=not config.progress)  # fmt: skip
    try:
        while step < config.total_steps:
            # --- rollout ---
            # Collect until the buffer holds a batch of fresh trajectories. In async mode a
            # rollout is always in flight, so generation overlaps the update below.
            wait_start = time.perf_counter()
            empty = 0
            while not buffer.ready(config.batch_size, version):
                if pending is None:
                    pending = submit_rollout()
                batch, seconds = pending.result()
                pending = None
                buffer.put(batch.trajectories)
                rollouts.add(batch, seconds)
                empty = 0 if batch.trajectories else empty + 1
                if empty >= config.max_empty_rollouts:
                    raise RuntimeError(
                        f"{empty} rollouts in a row gave no trajectories (e.g. every CISPO "
                        "group had zero reward variance): the policy never varies its reward; "
                        "warm-start it, raise the group size, or raise max_empty_rollouts"
                    )
            if config.mode == "async" and pending is None and step + 1 < config.total_steps:
                pending = submit_rollout()
            wait_s = time.perf_counter() - wait_start
            trajectories = buffer.get(config.batch_size, version)
            staleness = [version - t.policy_version for t in trajectories]

            # --- update ---
            update_start = time.perf_counter()
            update_metrics = learner.step(trajectories, current_version=version)
            update_s = time.perf_counter() - update_start
            step += 1
            unsynced += 1

            # --- sync ---
            # Let the rollout in flight finish on the old weights first (no sample mixes
            # two versions); its trajectories wait in the buffer, one version stale.
            sync_s = 0.0
            eval_due = step == config.total_steps or (
                config.eval_every > 0 and step % config.eval_every == 0
            )
            if unsynced and (step % config.sync_every == 0 or eval_due):
                if pending is not None:
                    batch, seconds = pending.result()
                    pending = None
                    buffer.put(batch.trajectories)
                    rollouts.add(batch, seconds)
                sync_start = time.perf_counter()
                version = engine.load_weights(*learner.export_weights())
                sync_s = time.perf_counter() - sync_start
                unsynced = 0

            # --- eval ---
            if eval_due:
                last_eval = run_eval(step)

            # --- logging ---
            if step % config.log_every == 0 or step == config.total_steps:
                scalars = {**update_metrics, **rollouts.summary()}
                scalars.update({
                    tags.PERF_STALENESS: float(np.mean(staleness)),
                    tags.PERF_STALENESS_MAX: float(max(staleness)),
                    tags.PERF_DROPPED_STALE: float(buffer.dropped_stale),
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
                bar.set_postfix({k: f"{v:.3f}" for k, v in postfix.items()})
            bar.update(1)

            # --- checkpoint ---
            if step == config.total_steps or (
                config.checkpoint_every and step % config.checkpoint_every == 0
            ):
                save(step)
    except KeyboardInterrupt:
        bar.close()
        if pending is not None:
            pending.cancel()
        path = save(step)
        print(f"\ninterrupted at step {step}; checkpoint saved to {path}", flush=True)
        raise
    finally:
        bar.close()
        tb.close()
    if pending is not None:  # a rollout started for a step that will not come
        pending.cancel()
    return {"step": step, "run_dir": str(run_dir), "policy_version": version, **last_eval}
