"""The training loop on a fake engine (fast; the real engine runs in tests/e2e): tags,
checkpoints, resume, Ctrl-C, the deterministic task sampler."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from trainer_fakes import FakeSyncEngine

from langrl import metrics as tags
from langrl.config import load_config
from langrl.learner import Learner, latest_checkpoint
from langrl.tiny.model import build_random_policy
from langrl.trainer import TaskSampler, train

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
