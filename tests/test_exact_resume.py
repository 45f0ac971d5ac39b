"""Exact resume on a fake engine (fast; the real engine and a real SIGKILL are in
tests/e2e/test_reproducible.py): a run interrupted right after a checkpoint and resumed from
that checkpoint alone ends as the run that was never interrupted: bit-identical weights and
optimizer state, step counter, data order, buffer and TensorBoard series.

The engine's samples are a function of each request's seed alone, as a seeded vLLM
request's are, so the comparison isolates what the training run itself keeps across a
resume (the buffered trajectories, the rollout statistics, the weight version, the
sync windows, the task seeds). The interruption happens in-process: an exception no handler
catches is raised as the checkpoint returns, so nothing of the run saves anything more, and
the resumed ``TrainingRun`` is built from the config and the checkpoint only.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from trainer_fakes import COMPLETIONS, FakeSyncEngine, TokenizedScriptedEngine

from langrl.buffer import TrajectoryBuffer
from langrl.engine.base import Generation, Sample
from langrl.learner import latest_checkpoint
from langrl.tiny.model import build_random_policy
from langrl.training import run as run_module
from langrl.training import train
from langrl.training.config import load_config
from langrl.training.planner import SyncSchedule
from langrl.training.state import TaskSampler
from langrl.trajectory import Trajectory

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> Path:
    return build_random_policy(tmp_path_factory.mktemp("policy"), "test")


#: Rewards differ within most groups: legal answers ({lo}, {hi}: two of the task's numbers)
#: score above -1 by their distance to the target.
SEEDED_COMPLETIONS = (*COMPLETIONS, "<answer>{lo} / {hi}</answer>", "<answer>{hi} - {lo}</answer>")


class SeededEngine(TokenizedScriptedEngine):
    """Sample ``i`` of a request seeded ``s`` is drawn by ``random.Random(s + i)`` (vLLM
    seeds the ``n`` samples of a request ``s, s + 1, ...``): completion and logprobs. An
    unseeded request draws from the engine's own counter, like an engine RNG."""

    async def generate(self, prompt, sampling):
        ids = list(prompt)
        numbers = re.search(r"Numbers: ([\d ]+)", self.tokenizer.decode(ids))
        lo, hi = sorted(int(x) for x in numbers.group(1).split()[:2]) if numbers else (1, 1)
        samples = []
        for i in range(sampling.n):
            rng = random.Random(f"unseeded {self.calls} {i}" if sampling.seed is None else sampling.seed + i)  # fmt: skip
            text = rng.choice(SEEDED_COMPLETIONS).format(lo=lo, hi=hi)
            tok = self.tokenizer(text, add_special_tokens=False)["input_ids"][: sampling.max_tokens]
            logprobs = [-rng.random() for _ in tok]
            samples.append(Sample(tok, self.tokenizer.decode(tok), logprobs, sum(logprobs), "stop"))
        self.calls += 1
        return Generation(ids, samples, self.policy_version)


def _engine(policy) -> FakeSyncEngine:
    engine = FakeSyncEngine(policy)
    engine.engine = SeededEngine(policy)
    return engine


def _config(policy, run_dir, mode, *overrides, **fields):
    # CISPO, 2 prompts x 4 samples = 8 trajectories per rollout, 4 per step: a rollout
    # feeds two steps, so the step-3 checkpoint holds 4 buffered trajectories. Windows of 2
    # steps: the checkpoint at 3 is mid-window, so it must end the window itself.
    args = ["--total_steps", "6", "--batch_size", "4", "--sync_every", "2",
            "--checkpoint_every", "3", "--eval_every", "0", "--eval.k", "2",
            "--eval.num_problems", "2", "--text_every", "1", "--log_every", "1",
            "--progress", "false", "--run_dir", str(run_dir), "--mode", mode,
            "--max_staleness", "2", "--learner.lr", "1e-3",
            "--learner.value_warmup_steps", "0", "--learner.warmup_steps", "0",
            "--cispo.num_prompts", "2", "--cispo.group_size", "4", *overrides]  # fmt: skip
    return load_config(ROOT / "configs" / "tiny_cpu.yaml", args, agent="cispo", model=str(policy), **fields)  # fmt: skip


class Killed(BaseException):
    """Stands for SIGKILL: no handler of the run catches it (Ctrl-C's would save)."""


def _kill_after_checkpoint(monkeypatch, step: int) -> None:
    original = run_module.TrainingRun.save

    def save(self, *args, **kwargs):
        path = original(self, *args, **kwargs)
        if self.step == step:
            raise Killed
        return path

    monkeypatch.setattr(run_module.TrainingRun, "save", save)


def read_scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    """Every scalar series of a run as TensorBoard shows it (later sessions' purges applied)."""
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def read_texts(run_dir: Path) -> dict[str, dict[int, bytes]]:
    """The text series (sample transcripts), each transcript's engine weight version
    (``, v7``) left out: it is the serving engine's own counter, which a resumed run's fresh
    engine (or, here, a shared one) counts anew; the run's own version is the
    ``perf/policy_version`` scalar."""
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {
        tag: {
            e.step: re.sub(rb", v\d+\n", b", v?\n", e.tensor_proto.string_val[0] + b"\n")
            for e in acc.Tensors(tag)
        }
        for tag in acc.Tags()["tensors"]
        if tag != "hyperparameters/text_summary"  # the run's config: resume=True differs
    }


def is_timing(tag: str) -> bool:
    """Wall-clock tags (``perf/update_s``, ``perf/tokens_per_s``, ``perf/train_wall_s``...):
    they measure this machine's speed, not the run, and differ between any two runs."""
    return tag.endswith("_s")


def final_state(run_dir: Path) -> tuple[dict, dict, dict]:
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    weights = load_file(ckpt / "model.safetensors")
    weights.update({f"value_head.{k}": v for k, v in load_file(ckpt / "value_head" / "value_head.safetensors").items()})  # fmt: skip
    optimizer = torch.load(ckpt / "optimizer.pt", weights_only=True)
    state = json.loads((ckpt / "learner_state.json").read_text())
    return weights, optimizer, state["extra"] | {"learner_step": state["global_step"]}


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_run_killed_after_a_checkpoint_and_resumed_is_the_uninterrupted_run(
    policy, tmp_path, monkeypatch, mode
):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    engine = _engine(policy)
    try:
        train(_config(policy, whole, mode), engine)
        with monkeypatch.context() as patch:
            _kill_after_checkpoint(patch, 3)
            with pytest.raises(Killed):
                train(_config(policy, parts, mode), engine)
        saved = json.loads((latest_checkpoint(parts / "checkpoints") / "learner_state.json").read_text())  # fmt: skip
        assert saved["extra"]["global_step"] == 3
        assert len(saved["extra"]["buffer"]["trajectories"]) > 0  # the kill left data behind
        result = train(_config(policy, parts, mode, resume=True), engine)
    finally:
        engine.shutdown()
    assert result["step"] == 6

    weights_a, optim_a, extra_a = final_state(whole)
    weights_b, optim_b, extra_b = final_state(parts)
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        assert torch.equal(weights_a[name], weights_b[name]), name
    for key, value in optim_a["state"].items():
        for field, tensor in value.items():
            assert torch.equal(tensor, optim_b["state"][key][field]), (key, field)
    assert extra_a["global_step"] == extra_b["global_step"] == 6
    assert extra_a["learner_step"] == extra_b["learner_step"] == 6
    assert extra_a["sampler"] == extra_b["sampler"]  # the same data order, to the task
    assert extra_a["buffer"] == extra_b["buffer"]
    assert extra_a["run_version"] == extra_b["run_version"]
    timing = {"train_wall_s", "eval_wall_s"}
    assert {k: v for k, v in extra_a["totals"].items() if k not in timing} == {
        k: v for k, v in extra_b["totals"].items() if k not in timing
    }

    scalars_a, scalars_b = read_scalars(whole), read_scalars(parts)
    assert scalars_a.keys() == scalars_b.keys()
    for tag in scalars_a:
        assert scalars_a[tag].keys() == scalars_b[tag].keys(), tag
        if not is_timing(tag):
            assert scalars_a[tag] == scalars_b[tag], tag
    assert list(scalars_a["loss/total"]) == [1, 2, 3, 4, 5, 6]
    # Pushes at 2, 3 (the checkpoint ends its window), 4 and 6 (the last step).
    assert list(scalars_a["perf/policy_version"].values()) == [0, 1, 2, 3, 3, 4]
    assert read_texts(whole) == read_texts(parts)


def test_two_seeded_runs_are_the_same_run(policy, tmp_path):
    engine = _engine(policy)
    try:
        for name in ("a", "b"):
            train(_config(policy, tmp_path / name, "sync", "--checkpoint_every", "0"), engine)
        # A different run seed draws other task seeds (and another data order).
        train(_config(policy, tmp_path / "c", "sync", "--checkpoint_every", "0", "--seed", "1"), engine)  # fmt: skip
    finally:
        engine.shutdown()
    a, b, c = (final_state(tmp_path / name)[0] for name in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    scalars = [read_scalars(tmp_path / name) for name in "ab"]
    assert {t: s for t, s in scalars[0].items() if not is_timing(t)} == {
        t: s for t, s in scalars[1].items() if not is_timing(t)
    }


def test_checkpoints_end_sync_windows():
    schedule = SyncSchedule(total_steps=10, sync_every=4, eval_every=0, checkpoint_every=3)
    assert [s for s in range(1, 11) if schedule.sync_due(s)] == [3, 4, 6, 8, 9, 10]
    assert schedule.window_end(1) == 3 and schedule.window_end(4) == 4
    assert SyncSchedule(10, 4, 0).window_end(1) == 4  # no checkpoints: sync_every alone


def test_task_sampler_seeds_follow_the_data_order():
    a = TaskSampler(5, seed=3)
    first = a.next(7, seeded=True)  # crosses into epoch 1
    assert [t["index"] for t in first] == [t["index"] for t in TaskSampler(5, 3).next(7)]
    assert len({t["seed"] for t in first}) == 7  # a problem seen again gets a new seed
    b = TaskSampler(5, seed=3)
    b.next(4)
    b.load_state_dict(TaskSampler(5, seed=3).state_dict() | {"epoch": 0, "position": 4})
    assert b.next(3, seeded=True) == first[4:]
    assert TaskSampler(5, seed=4).next(7, seeded=True) != first


def test_buffer_state_round_trips_exactly_through_json():
    trajs = [
        Trajectory([1, 2], [3, 4, 5], [-0.1, -1 / 3, -2e-9], reward=0.25,
                   advantages=[1 / 7] * 3, temperature=0.8, policy_version=v, agent="cispo",
                   info={"task": {"index": v}, "text": "t", "np": torch.tensor(1.5)})
        for v in (9, 10, 10)
    ]  # fmt: skip
    buffer = TrajectoryBuffer(capacity=8, max_staleness=2)
    buffer.put(trajs)
    buffer.get(1, current_version=10)
    state = json.loads(json.dumps(buffer.state_dict(current_version=10)))
    restored = TrajectoryBuffer(capacity=8, max_staleness=2)
    restored.load_state_dict(state, current_version=3)  # a fresh engine counts anew
    assert restored.stats() == buffer.stats()
    got = restored.get(2, current_version=3)
    expected = buffer.get(2, current_version=10)
    for new, old in zip(got, expected, strict=True):
        assert new.completion_ids == old.completion_ids and new.prompt_ids == old.prompt_ids
        assert new.behaviour_logprobs == old.behaviour_logprobs  # bit for bit
        assert new.advantages == old.advantages and new.reward == old.reward
        assert 3 - new.policy_version == 10 - old.policy_version  # the same staleness
        assert new.info["np"] == 1.5 and new.temperature == old.temperature
