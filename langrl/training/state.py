"""What a training run carries across steps and sessions: the task order, run totals, the
evaluation history and the RNG states (all saved in a checkpoint's ``extra`` and restored on
resume), and the per-step rollout statistics."""

from __future__ import annotations

import base64
import csv
import dataclasses
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from langrl import metrics as tags
from langrl.agents.base import TASK_SEED_KEY, derive_seed
from langrl.trajectory import Trajectory

#: Evaluation history beside the TensorBoard events: one CSV row per evaluation.
EVAL_HISTORY_FILE = "eval_history.csv"


class TaskSampler:
    """Deterministic, resumable order over a data split: a seeded shuffle per epoch.

    ``next(k)`` returns the next ``k`` tasks (``{"index": i}``), crossing into a fresh
    shuffle (seed + epoch) at the end of the split; ``next(k, seeded=True)`` adds each
    task's sampling seed (``{"index": i, "seed": s}``, for agents that declare
    ``task_seeds``), a hash of (seed, epoch, position): fixed by the data order alone, so
    the same in every run with this seed and after a resume, and different on every visit
    of a problem. ``state_dict`` / ``load_state_dict``
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

    def next(self, k: int, seeded: bool = False) -> list[dict[str, int]]:
        tasks = []
        for _ in range(k):
            if self.position == self.size:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._shuffle(self.epoch)
            task = {"index": self._order[self.position]}
            if seeded:
                task[TASK_SEED_KEY] = derive_seed(self.seed, self.epoch, self.position)
            tasks.append(task)
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


def _from_known_fields(cls: type, state: Mapping[str, Any]) -> Any:
    """``cls`` built from the keys of ``state`` that are its fields (a checkpoint from an
    older version may lack some, or hold ones since removed)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in state.items() if k in names})


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

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable; what rollouts finished since the last log (a checkpoint keeps
        it, so a resumed run logs the same ``train/`` and ``gen/`` scalars as one that ran
        on)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> RolloutStats:
        return _from_known_fields(cls, state)

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
        return _from_known_fields(cls, state)

    def scalars(self) -> dict[str, float]:
        return {
            tags.PERF_GEN_TOKENS_TOTAL: self.gen_tokens_total,
            tags.PERF_GEN_SAMPLES_TOTAL: self.gen_samples_total,
            tags.PERF_GENERATED_TRAJECTORIES_TOTAL: float(self.generated_trajectories_total),
            tags.PERF_TRAINED_TRAJECTORIES_TOTAL: float(self.trained_trajectories_total),
            tags.PERF_TRAIN_WALL_S: self.train_wall_s,
        }


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


def evals_without_gain(scores: Sequence[float], threshold: float = 0.0) -> int:
    """How many of the last ``scores`` (evaluations in run order) came in a row without a
    gain: no score above the best before it by more than ``threshold``. The first score
    sets the best; a gain resets the count (``TrainConfig.early_stopping_patience``)."""
    best, flat = None, 0
    for score in scores:
        if best is None or score > best + threshold:
            best, flat = score, 0
        else:
            flat += 1
    return flat


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
