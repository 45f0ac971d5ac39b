"""The training loop on a fake engine (fast; the real engine runs in tests/e2e): tags,
checkpoints, resume, Ctrl-C, the deterministic task sampler, async generation sized to
need, the generation budget, held-out validation and the evaluation history."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from trainer_fakes import COMPLETIONS, FakeSyncEngine

from langrl import metrics as tags
from langrl.buffer import TrajectoryBuffer
from langrl.learner import Learner, latest_checkpoint
from langrl.tiny.model import build_random_policy
from langrl.training import train
from langrl.training.config import ConfigError, load_config
from langrl.training.planner import SyncSchedule, YieldEstimate, trajectories_needed
from langrl.training.run import TrainingRun
from langrl.training.state import (
    EVAL_HISTORY_COLUMNS,
    EVAL_HISTORY_FILE,
    EvalHistory,
    TaskSampler,
    evals_without_gain,
)
from langrl.trajectory import Trajectory

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> Path:
    return build_random_policy(tmp_path_factory.mktemp("policy"), "test")


def _config(policy, run_dir, agent="cispo", *overrides, **fields):
    args = ["--total_steps", "3", "--batch_size", "4", "--sync_every", "1", "--eval.k", "2",
            "--eval.num_problems", "4", "--eval_every", "2", "--checkpoint_every", "2",
            "--text_every", "1", "--progress", "false", "--run_dir", str(run_dir),
            "--cispo.num_prompts", "2", "--bon.num_prompts", "2", "--cispo.group_size", "4",
            "--bon.n", "4", "--mcts.iterations_per_worker", "1", "--mcts.num_workers", "2",
            *overrides]  # fmt: skip
    return load_config(
        ROOT / "configs" / "tiny_cpu.yaml", args, agent=agent, model=str(policy), **fields
    )


def _scalars(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


@pytest.mark.parametrize("agent", ["cispo", "bon", "mcts"])
def test_every_agent_trains_logs_and_checkpoints(policy, tmp_path, agent):
    engine = FakeSyncEngine(policy)
    try:
        result = train(_config(policy, tmp_path, agent), engine)
    finally:
        engine.shutdown()
    assert result["step"] == 3
    assert engine.engine.pushed and engine.policy_version == result["policy_version"] == 3
    acc = _scalars(tmp_path)
    scalar_tags = set(acc.Tags()["scalars"])
    assert set(tags.CORE_TRAIN_TAGS) <= scalar_tags
    assert {"loss/policy", "loss/value", "loss/total", "train/grad_norm", "train/lr"} <= scalar_tags
    assert {e.step for e in acc.Scalars(tags.EVAL_MEAN_AT_K)} == {0, 2, 3}
    assert [e.step for e in acc.Scalars("loss/total")] == [1, 2, 3]
    text_tags = acc.Tags()["tensors"]
    assert any(t.startswith("hyperparameters") for t in text_tags)
    assert any(t.startswith(tags.TEXT_TRAIN_SAMPLES) for t in text_tags)
    assert (tmp_path / "config.yaml").is_file()
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step_00000003"


def test_resume_continues_step_counter_optimizer_and_data(policy, tmp_path):
    engine = FakeSyncEngine(policy)
    try:
        train(_config(policy, tmp_path, "cispo", "--total_steps", "2"), engine)
        first = json.loads(
            (latest_checkpoint(tmp_path / "checkpoints") / "learner_state.json").read_text()
        )
        result = train(
            _config(policy, tmp_path, "cispo", "--total_steps", "4", resume=True), engine
        )
    finally:
        engine.shutdown()
    assert first["extra"]["global_step"] == 2
    assert result["step"] == 4
    state = json.loads(
        (latest_checkpoint(tmp_path / "checkpoints") / "learner_state.json").read_text()
    )
    assert state["extra"]["global_step"] == 4
    assert state["global_step"] == 4  # the learner's own counter (optimizer steps) continued
    first_pos = first["extra"]["sampler"]["position"]
    assert state["extra"]["sampler"]["position"] > first_pos
    # Two runs write two event files; TensorBoard reads them in file-name order, which is
    # not run order when both start within the same second. Each step must appear once.
    losses = [e.step for e in _scalars(tmp_path).Scalars("loss/total")]
    assert sorted(losses) == [1, 2, 3, 4]


def test_ctrl_c_saves_a_checkpoint(policy, tmp_path, monkeypatch):
    original = Learner.step
    calls = {"n": 0}

    def interrupting_step(self, batch, current_version=None):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, batch, current_version=current_version)

    monkeypatch.setattr(Learner, "step", interrupting_step)
    engine = FakeSyncEngine(policy)
    try:
        with pytest.raises(KeyboardInterrupt):
            train(_config(policy, tmp_path, "cispo", "--checkpoint_every", "0"), engine)
    finally:
        engine.shutdown()
    ckpt = latest_checkpoint(tmp_path / "checkpoints")
    assert ckpt is not None and ckpt.name == "step_00000001"


def test_sync_mode_runs(policy, tmp_path):
    engine = FakeSyncEngine(policy)
    try:
        result = train(
            _config(policy, tmp_path, "bon", "--mode", "sync", "--sync_every", "2"), engine
        )
    finally:
        engine.shutdown()
    assert result["step"] == 3
    assert engine.policy_version == 2  # synced at step 2 and before the final eval


def test_the_learner_trains_with_its_threads_and_the_run_gives_them_back(policy, tmp_path):
    engine = FakeSyncEngine(policy)
    before = torch.get_num_threads()
    seen = []
    run = TrainingRun(_config(policy, tmp_path, "bon", "--learner.num_threads", "1"), engine)
    step = run.learner.step
    run.learner.step = lambda *a, **k: seen.append(torch.get_num_threads()) or step(*a, **k)
    try:
        run.run()
    finally:
        run.close()
        engine.shutdown()
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == before


def test_task_sampler_is_deterministic_and_resumable():
    a = TaskSampler(10, seed=3)
    first = a.next(7)
    state = a.state_dict()
    rest = a.next(8)  # crosses into epoch 1
    assert sorted(t["index"] for t in first + rest[:3]) == list(range(10))
    assert a.epoch == 1
    b = TaskSampler(10, seed=3)
    b.load_state_dict(state)
    assert b.next(8) == rest
    assert TaskSampler(10, seed=3).next(7) == first
    assert TaskSampler(10, seed=4).next(7) != first


# --- async generation sized to need ---


def _train(config, policy) -> dict:
    engine = FakeSyncEngine(policy)
    try:
        return train(config, engine)
    finally:
        engine.shutdown()


def _values(run_dir: Path, tag: str) -> list[float]:
    return [e.value for e in _scalars(run_dir).Scalars(tag)]


def _fixed_yield_cispo(policy, run_dir, *overrides):
    """CISPO keeping every group: exactly 2 tasks x 4 = 8 trajectories per full rollout."""
    return _config(
        policy, run_dir, "cispo", "--total_steps", "12", "--eval_every", "0",
        "--checkpoint_every", "0", "--text_every", "0", "--cispo.filter_zero_variance", "false",
        *overrides,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("sync_every", "eval_every", "max_staleness"), [(2, 0, 1), (4, 6, 2)]
)  # (4, 6): an evaluation at step 6 cuts a window short
def test_async_generates_only_what_the_next_window_needs(
    policy, tmp_path, sync_every, eval_every, max_staleness
):
    config = _fixed_yield_cispo(
        policy, tmp_path, "--sync_every", str(sync_every), "--eval_every", str(eval_every),
        "--max_staleness", str(max_staleness),
    )  # fmt: skip
    result = _train(config, policy)
    assert result["step"] == 12
    assert result["trained_trajectories_total"] == 12 * 4
    # (a) nothing went stale; (b) at most one rollout's worth generated beyond what was
    # trained (a rollout every step, as before, made 8 per step for 4 trained);
    # (c) every batch within the bound, and generation did overlap training (staleness 1).
    assert _values(tmp_path, tags.PERF_DROPPED_STALE)[-1] == 0
    waste = result["generated_trajectories_total"] - result["trained_trajectories_total"]
    assert 0 <= waste <= 2 * 4
    staleness = _values(tmp_path, tags.PERF_STALENESS_MAX)
    assert len(staleness) == 12 and max(staleness) <= max_staleness
    assert 1 in staleness
    assert (
        _values(tmp_path, tags.PERF_GENERATED_TRAJECTORIES_TOTAL)[-1]
        == result["generated_trajectories_total"]
    )
    assert _values(tmp_path, tags.PERF_TRAINED_TRAJECTORIES_TOTAL) == [
        4.0 * s for s in range(1, 13)
    ]


@pytest.mark.parametrize("train_expiring", [True, False])
def test_async_with_random_yields_trains_what_would_expire_instead_of_dropping_it(
    policy, tmp_path, train_expiring
):
    # Half the groups have no reward variance (every sample the same): rollouts yield 0, 4 or
    # 8 for 4-trajectory batches, so rollouts sized from the estimated yield overshoot now and then.
    config = _fixed_yield_cispo(
        policy, tmp_path, "--total_steps", "24", "--cispo.filter_zero_variance", "true",
        "--sync_every", "1", "--max_staleness", "1",  # the reproduce preset's
        "--train_expiring", str(train_expiring).lower(),
    )  # fmt: skip
    engine = FakeSyncEngine(
        policy, completions=("<answer>{lo} / {hi}</answer>", "no answer here"), uniform_frac=0.5
    )
    try:
        result = train(config, engine)
    finally:
        engine.shutdown()
    assert result["step"] == 24
    dropped = _values(tmp_path, tags.PERF_DROPPED_STALE)[-1]
    sizes = _values(tmp_path, tags.PERF_BATCH_TRAJECTORIES)
    assert max(_values(tmp_path, tags.PERF_STALENESS_MAX)) <= 1  # never beyond the bound
    assert sum(sizes) == result["trained_trajectories_total"]
    if train_expiring:
        assert dropped == 0
        assert min(sizes) == 4 and 4 < max(sizes) <= 8  # surpluses happened, were trained
        # What was generated was trained, but for the last rollout's leftovers.
        waste = result["generated_trajectories_total"] - result["trained_trajectories_total"]
        assert 0 <= waste <= 8
    else:  # the same run with fixed batches: the surplus expires
        assert dropped > 0 and set(sizes) == {4.0}


def test_sync_mode_generates_a_full_rollout_per_empty_buffer(policy, tmp_path):
    config = _fixed_yield_cispo(policy, tmp_path, "--mode", "sync", "--sync_every", "2")
    result = _train(config, policy)
    assert result["step"] == 12 and result["policy_version"] == 6
    # Each 8-trajectory rollout is trained in the two steps after it, on-policy.
    assert result["generated_trajectories_total"] == result["trained_trajectories_total"] == 48
    assert _values(tmp_path, tags.PERF_STALENESS_MAX) == [0.0] * 12
    assert set(_values(tmp_path, tags.PERF_ROLLOUT_TASKS)) == {2.0}  # full rollouts only
    state = json.loads(
        (latest_checkpoint(tmp_path / "checkpoints") / "learner_state.json").read_text()
    )
    assert state["extra"]["sampler"]["position"] == 6 * 2


def test_yield_estimate_sizes_rollouts():
    est = YieldEstimate(decay=0.5)
    assert est.per_task is None and est.tasks_for(10, max_tasks=8) == 8
    est.update(num_tasks=8, num_trajectories=16)  # CISPO: half the groups of 4 kept
    assert est.per_task == pytest.approx(2.0)
    assert est.tasks_for(10, max_tasks=8) == 5
    assert est.tasks_for(1, max_tasks=8) == 1
    assert est.tasks_for(100, max_tasks=8) == 8
    est.update(num_tasks=8, num_trajectories=0)  # recent rollouts weigh more
    assert est.per_task == pytest.approx(8 / 12)
    with pytest.raises(ValueError, match="YieldEstimate.decay"):
        YieldEstimate(decay=1.0)


def _traj(version: int) -> Trajectory:
    return Trajectory([1], [2], [-0.1], 0.0, policy_version=version)


def test_trajectories_needed_counts_only_what_can_still_be_trained():
    schedule = SyncSchedule(total_steps=12, sync_every=2, eval_every=0)
    assert [schedule.window_end(t) for t in (1, 2, 3, 11, 12)] == [2, 2, 4, 12, 12]
    buffer = TrajectoryBuffer(capacity=64, max_staleness=1)
    kwargs = {"version": 3, "batch_size": 4, "max_staleness": 1}
    # Having taken step 3's batch (window 3..4): step 4 and steps 5..6 of the next window.
    assert trajectories_needed(schedule, buffer, current_step=3, first_step=4, **kwargs) == 12
    buffer.put([_traj(3)] * 5 + [_traj(2)] * 6)
    # Version 3 lasts into the next window; version 2 only covers step 4 (4 of its 6).
    assert trajectories_needed(schedule, buffer, current_step=3, first_step=4, **kwargs) == 3
    # At a window's last step the version-2 ones cannot be trained any more.
    assert trajectories_needed(schedule, buffer, current_step=4, first_step=5, **kwargs) == 3
    # The last window: nothing beyond the last step.
    assert trajectories_needed(schedule, buffer, current_step=12, first_step=13, **kwargs) == -5


# --- generation budget ---


def _request_tokens(engine) -> int:
    """Tokens of one fake engine request with n = len(COMPLETIONS) (every completion once)."""
    return sum(len(engine.tokenizer(c, add_special_tokens=False)["input_ids"]) for c in COMPLETIONS)


@pytest.mark.parametrize(
    ("agent", "sync_every", "budget_rollouts", "stop_step", "pushes"),
    [
        # The budget is crossed by the rollout collected at the step-2 push; step 3 trains
        # what it brought, then the run ends.
        ("cispo", 2, 1, 3, 2),
        # Crossed at the step-1 push by a rollout too small for a batch: step 1 was the last.
        ("bon", 1, 2, 1, 1),
    ],
)
def test_generation_budget_stops_the_run_with_a_final_eval_and_checkpoint(
    policy, tmp_path, agent, sync_every, budget_rollouts, stop_step, pushes
):
    engine = FakeSyncEngine(policy)
    rollout_tokens = 2 * _request_tokens(engine)  # 2 tasks, 4 samples each
    budget = budget_rollouts * rollout_tokens + 1
    config = _config(
        policy, tmp_path, agent, "--total_steps", "12", "--eval_every", "0", "--checkpoint_every",
        "0", "--sync_every", str(sync_every), "--max_gen_tokens", str(budget),
        "--cispo.filter_zero_variance", "false",  # fixed yields: 8 trajectories per rollout
    )  # fmt: skip
    try:
        result = train(config, engine)
    finally:
        engine.shutdown()
    assert result["step"] == stop_step
    assert result["gen_tokens_total"] == (budget_rollouts + 1) * rollout_tokens >= budget
    assert latest_checkpoint(tmp_path / "checkpoints").name == f"step_{stop_step:08d}"
    assert result["policy_version"] == engine.policy_version == pushes
    assert {e.step for e in _scalars(tmp_path).Scalars(tags.EVAL_MEAN_AT_K)} == {0, stop_step}
    assert _values(tmp_path, tags.PERF_GEN_TOKENS_TOTAL)[-1] == result["gen_tokens_total"]
    rows = EvalHistory(tmp_path / EVAL_HISTORY_FILE, keep_through=10**9).rows()
    assert [int(r["step"]) for r in rows] == [0, stop_step]
    assert float(rows[-1]["gen_tokens_total"]) == result["gen_tokens_total"]


def test_eval_every_tokens_evaluates_and_checkpoints_at_token_multiples(policy, tmp_path):
    engine = FakeSyncEngine(policy)
    rollout_tokens = 2 * _request_tokens(engine)  # a full rollout: 2 tasks, 4 samples each
    config = _fixed_yield_cispo(
        policy, tmp_path, "--total_steps", "8", "--sync_every", "1", "--mode", "sync",
        "--batch_size", "8", "--eval_every_tokens", str(2 * rollout_tokens),
    )  # fmt: skip
    try:
        result = train(config, engine)
    finally:
        engine.shutdown()
    rows = EvalHistory(tmp_path / EVAL_HISTORY_FILE, keep_through=10**9).rows()
    # One rollout per step: every second step crosses a multiple of 2 rollouts' tokens.
    assert [int(r["step"]) for r in rows] == [0, 2, 4, 6, 8]
    assert [float(r["gen_tokens_total"]) for r in rows] == [
        i * 2 * rollout_tokens for i in range(5)
    ]
    steps = sorted(int(p.name.split("_")[1]) for p in (tmp_path / "checkpoints").glob("step_*"))
    assert steps == [2, 4, 6, 8]  # checkpoint_every is 0: these come with the token evals
    assert result["step"] == 8


# --- held-out validation and the evaluation history ---


def test_eval_history_holdout_and_resume(policy, tmp_path):
    holdout = ["--holdout", "8", "--eval.split", "train", "--eval.first_problem", "-8",
               "--eval.num_problems", "8"]  # fmt: skip
    first = _train(_config(policy, tmp_path, "cispo", *holdout), policy)  # evals at 0, 2, 3
    path = tmp_path / EVAL_HISTORY_FILE
    rows = EvalHistory(path, keep_through=10**9).rows()
    assert list(rows[0])[: len(EVAL_HISTORY_COLUMNS)] == list(EVAL_HISTORY_COLUMNS)
    assert "mean_at_k_ci95" in rows[0]
    assert [int(r["step"]) for r in rows] == [0, 2, 3]
    assert {(r["eval_split"], r["num_problems"], r["k"]) for r in rows} == {("train", "8", "2")}
    assert float(rows[-1]["mean_at_k"]) == pytest.approx(first[tags.EVAL_MEAN_AT_K])
    tokens = [float(r["gen_tokens_total"]) for r in rows]
    assert tokens[0] == 0 and tokens == sorted(tokens) and tokens[-1] == first["gen_tokens_total"]
    ckpt = latest_checkpoint(tmp_path / "checkpoints")
    extra = json.loads((ckpt / "learner_state.json").read_text())["extra"]
    assert extra["sampler"]["size"] == 20_000 - 8  # the last 8 are never handed out
    assert extra["totals"]["gen_tokens_total"] == first["gen_tokens_total"]
    assert extra["totals"]["train_wall_s"] > 0 and extra["totals"]["eval_wall_s"] > 0

    # A crash after the step-3 evaluation, before its checkpoint: resume from step 2.
    shutil.rmtree(ckpt)
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step_00000002"
    second = _train(
        _config(policy, tmp_path, "cispo", *holdout, "--total_steps", "5", resume=True), policy
    )
    rows = EvalHistory(path, keep_through=10**9).rows()
    assert [int(r["step"]) for r in rows] == [0, 2, 4, 5]  # step 3's row went with its session
    tokens = [float(r["gen_tokens_total"]) for r in rows]
    assert tokens == sorted(tokens) and tokens[-1] == second["gen_tokens_total"]
    assert second["train_wall_s"] > extra["totals"]["train_wall_s"]  # counted on, not reset


def test_holdout_and_train_split_eval_are_validated(policy, tmp_path):
    def error(*overrides) -> str:
        with pytest.raises(ConfigError) as err:
            _config(policy, tmp_path, "cispo", *overrides)
        assert "\n" not in str(err.value)
        return str(err.value)

    assert "holdout" in error("--holdout", "20000")
    assert "eval.first_problem" in error("--eval.split", "train")  # every problem is trained
    assert "[0, 19992)" in error(
        "--holdout", "8", "--eval.split", "train", "--eval.first_problem", "-9"
    )
    assert "max_gen_tokens" in error("--max_gen_tokens", "0")
    config = _config(policy, tmp_path, "cispo", "--holdout", "8", "--eval.split", "train",
                     "--eval.first_problem", "19992")  # fmt: skip
    assert config.holdout == 8 and config.train_split_size() == 20_000


# --- early stopping at a plateau ---


def test_evals_without_gain_counts_from_the_last_new_best():
    assert evals_without_gain([]) == 0
    assert evals_without_gain([0.1]) == 0
    assert evals_without_gain([0.1, 0.2, 0.2, 0.15]) == 2  # a tie is no gain
    assert evals_without_gain([0.1, 0.05, 0.3]) == 0
    assert evals_without_gain([0.1, 0.105, 0.2], threshold=0.01) == 0
    assert evals_without_gain([0.1, 0.105, 0.109], threshold=0.01) == 2  # best stays 0.1


def test_early_stopping_ends_the_run_and_counts_evaluations_across_resume(policy, tmp_path):
    # threshold 1.0: no evaluation can gain, so every one after the first is flat.
    flat = ["--eval_every", "1", "--checkpoint_every", "0", "--early_stopping_threshold", "1.0"]
    first = _train(
        _config(policy, tmp_path, "cispo", *flat, "--total_steps", "10",
                "--early_stopping_patience", "2"),
        policy,
    )  # fmt: skip
    assert first["stopped_early"] and first["step"] == 2  # evals at 0, 1, 2
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step_00000002"
    rows = EvalHistory(tmp_path / EVAL_HISTORY_FILE, keep_through=10**9).rows()
    assert [int(r["step"]) for r in rows] == [0, 1, 2]
    # Resumed with more patience: the two flat evaluations before count, one more ends it.
    second = _train(
        _config(policy, tmp_path, "cispo", *flat, "--total_steps", "10",
                "--early_stopping_patience", "3", resume=True),
        policy,
    )  # fmt: skip
    assert second["stopped_early"] and second["step"] == 3
    # Off (the default): the run goes to total_steps.
    third = _train(_config(policy, tmp_path / "off", "cispo", *flat, "--total_steps", "3"), policy)
    assert not third["stopped_early"] and third["step"] == 3


def test_early_stopping_needs_evaluations(policy, tmp_path):
    with pytest.raises(ConfigError, match="early_stopping_patience: needs evaluations"):
        _config(policy, tmp_path, "cispo", "--eval_every", "0", "--early_stopping_patience", "3")
    with pytest.raises(ConfigError, match="early_stopping_threshold"):
        _config(policy, tmp_path, "cispo", "--early_stopping_threshold", "-0.1")


# --- value-only trajectories through the loop ---


def test_mcts_value_ends_reach_the_learner_beyond_the_batch(policy, tmp_path):
    config = _config(policy, tmp_path, "mcts", "--mcts.value_ends", "4", "--mode", "sync",
                     "--train_expiring", "false", "--mcts.iterations_per_worker", "3")  # fmt: skip
    assert config.learner.c_value > 0
    result = _train(config, policy)
    assert result["step"] == 3
    value_only = _values(tmp_path, tags.TRAIN_VALUE_ONLY_TRAJECTORIES)
    assert len(value_only) == 3 and sum(value_only) > 0
    assert _values(tmp_path, tags.PERF_BATCH_TRAJECTORIES) == [4.0, 4.0, 4.0]  # batch_size
    assert result["trained_trajectories_total"] == 12  # value-only ones are not counted
    assert max(_values(tmp_path, "search/value_ends")) > 0
