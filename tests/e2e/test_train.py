"""End-to-end training on the real vLLM engine and the tiny TEST policy (slow; runs in CI).

One engine per test session (``vllm_engine`` from tests/conftest.py); every test restores
the engine's weights afterwards (``preserve_weights``). Each agent trains a few steps; we
check that trajectories carry the engine's sampled ids and logprobs, losses are finite,
weights change and reach the engine (policy version, values and logprobs move), TensorBoard
has the listed tags, resume continues the step counter and Ctrl-C saves a checkpoint.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from langrl import metrics as tags
from langrl.learner import Learner, latest_checkpoint
from langrl.training import train
from langrl.training.config import load_config

# A test may start the session engine (up to its 300 s startup_timeout_s), then trains.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
PROBE_PROMPT = "Numbers: 3 5 7 2\nTarget: 24\n"
PROBE_COMPLETION = "<step>3 * 7 = 21</step>\n<answer>3 * 7 + 5 - 2</answer>"


def _config(policy: Path, run_dir: Path, agent: str, *overrides: str, **fields):
    args = [
        "--total_steps", "2", "--batch_size", "4", "--sync_every", "1", "--max_staleness", "1",
        "--eval.k", "2", "--eval.num_problems", "4", "--eval.max_tokens", "64",
        "--eval_every", "0", "--checkpoint_every", "0", "--text_every", "1",
        "--progress", "false", "--run_dir", str(run_dir),
        "--cispo.num_prompts", "2", "--cispo.group_size", "4", "--cispo.max_tokens", "64",
        # The tiny test policy may fail every sample alike; keep such groups (A = 0) so the
        # run never starves. Filtering itself is unit-tested in tests/agents/test_cispo.py.
        "--cispo.filter_zero_variance", "false",
        "--bon.num_prompts", "4", "--bon.n", "4", "--bon.max_tokens", "64",
        "--mcts.num_workers", "2", "--mcts.iterations_per_worker", "2",
        "--mcts.max_step_tokens", "24", "--mcts.finish_max_tokens", "64",
        "--learner.lr", "1e-3", "--learner.micro_batch_size", "8",
        # Two steps must move the policy: no value-only or lr warm-up steps here.
        "--learner.value_warmup_steps", "0", "--learner.warmup_steps", "0",
        *overrides,
    ]  # fmt: skip
    return load_config(
        ROOT / "configs" / "tiny_cpu.yaml", args, agent=agent, model=str(policy), **fields
    )


def _probe(engine) -> tuple[float, list[float]]:
    """V(probe prompt) and the raw logprobs of a fixed completion: both move with weights."""
    tok = engine.tokenizer
    prompt = tok(PROBE_PROMPT, add_special_tokens=False)["input_ids"]
    completion = tok(PROBE_COMPLETION, add_special_tokens=False)["input_ids"]
    (value,) = engine.values([prompt])
    (logprobs,) = engine.score(prompt, [completion])
    return value, logprobs


@pytest.fixture
def recorded_steps(monkeypatch):
    """Every (batch, metrics, engine version) the learner sees, checked as it happens."""
    seen: list[dict] = []
    original = Learner.step

    def step(self, batch, current_version=None):
        metrics = original(self, batch, current_version=current_version)
        seen.append({"batch": list(batch), "metrics": metrics, "version": current_version})
        return metrics

    monkeypatch.setattr(Learner, "step", step)
    return seen


@pytest.mark.parametrize("agent", ["mcts", "cispo", "bon"])
def test_agent_trains_end_to_end(
    agent, engine, tiny_policy_path, tmp_path, recorded_steps, monkeypatch
):
    value_before, logprobs_before = _probe(engine)
    version_before = engine.policy_version

    # CISPO's first batch is checked against the engine before any update: the learner
    # must get exactly the ids the engine sampled and the engine's logprobs (T = 1).
    checked = {"n": 0}
    if agent == "cispo":
        original = Learner.step

        def check_then_step(self, batch, current_version=None):
            if checked["n"] == 0:
                for traj in batch[:2]:
                    assert traj.policy_version == engine.policy_version
                    # The graded text is the decoded ids (vLLM leaves out a final EOS and
                    # an incomplete byte-level character).
                    assert engine.tokenizer.decode(traj.completion_ids).startswith(
                        traj.info["text"]
                    )
                    (raw,) = engine.score(traj.prompt_ids, [traj.completion_ids])
                    assert raw == pytest.approx(traj.behaviour_logprobs, abs=1e-2)
                checked["n"] += 1
            return original(self, batch, current_version=current_version)

        # recorded_steps has wrapped Learner.step already; this check runs before it.
        monkeypatch.setattr(Learner, "step", check_then_step)

    result = train(_config(tiny_policy_path, tmp_path, agent), engine)

    assert result["step"] == 2
    assert len(recorded_steps) == 2
    for record in recorded_steps:
        for traj in record["batch"]:
            assert traj.agent == agent
            assert len(traj.completion_ids) == len(traj.behaviour_logprobs) > 0
            assert all(math.isfinite(x) and x <= 1e-6 for x in traj.behaviour_logprobs)
            assert traj.prompt_ids and all(isinstance(i, int) for i in traj.completion_ids)
            if agent == "cispo":
                assert traj.advantages is not None and len(set(traj.advantages)) == 1
            else:
                assert traj.advantages is None  # the learner uses r - V
        m = record["metrics"]
        for tag in ("loss/policy", "loss/value", "loss/total", "train/grad_norm"):
            assert math.isfinite(m[tag]), (tag, m)
    if agent == "cispo":
        assert checked["n"] == 1
        # First update is on-policy: the learner's ratio to the behaviour policy is ~1.
        assert recorded_steps[0]["metrics"]["train/ratio_mean"] == pytest.approx(1.0, abs=0.05)

    # Weights changed and reached the engine.
    assert engine.policy_version == result["policy_version"] == version_before + 2
    value_after, logprobs_after = _probe(engine)
    if agent == "cispo":
        # CISPO supplies its advantages, so its learner runs with c_value = 0: the head's
        # zero-initialised output layer never trains and V stays exactly where it was.
        assert value_after == pytest.approx(value_before, abs=1e-7)
        # The policy moves only if some group had reward variance (the tiny test policy may
        # fail every sample alike; then every advantage is 0 and the KL term starts at 0).
        signal = any(a != 0 for r in recorded_steps for t in r["batch"] for a in t.advantages)
    else:
        assert value_after != pytest.approx(value_before, abs=1e-7)
        signal = True
    if signal:
        assert logprobs_after != pytest.approx(logprobs_before, abs=1e-6)
    else:
        assert logprobs_after == pytest.approx(logprobs_before, abs=1e-6)

    # TensorBoard has the listed tags.
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    expected = set(tags.CORE_TRAIN_TAGS) | {
        tags.LOSS_POLICY, tags.LOSS_VALUE, tags.LOSS_KL, tags.LOSS_TOTAL, tags.TRAIN_KL,
        tags.TRAIN_CLIP_FRAC, tags.TRAIN_GRAD_NORM, tags.TRAIN_LR, tags.PERF_STALENESS,
    }  # fmt: skip
    if agent == "mcts":
        expected |= {tags.SEARCH_TREE_SIZE, tags.SEARCH_ROOT_VALUE}
    if agent == "cispo":
        expected |= {tags.GEN_ZERO_VAR_GROUPS}
    assert expected <= scalars, expected - scalars
    # Every tag is listed in langrl.metrics (search/ ones are the MCTS agent's to add:
    # they only need the group).
    unlisted = {t for t in scalars - set(tags.TAGS) if not t.startswith("search/")}
    assert not unlisted, unlisted
    assert all(tags.check_tag(t) for t in scalars)
    assert [e.step for e in acc.Scalars(tags.EVAL_MEAN_AT_K)] == [0, 2]
    texts = acc.Tags()["tensors"]
    assert any(t.startswith(tags.TEXT_TRAIN_SAMPLES) for t in texts)
    assert any(t.startswith("hyperparameters") for t in texts)
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step_00000002"


def test_ctrl_c_saves_and_resume_continues(engine, tiny_policy_path, tmp_path, monkeypatch):
    original = Learner.step
    calls = {"n": 0}

    def interrupt_on_third(self, batch, current_version=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, batch, current_version=current_version)

    monkeypatch.setattr(Learner, "step", interrupt_on_third)
    config = _config(
        tiny_policy_path, tmp_path, "bon", "--total_steps", "4", "--eval_at_start", "false"
    )
    with pytest.raises(KeyboardInterrupt):
        train(config, engine)
    ckpt = latest_checkpoint(tmp_path / "checkpoints")
    assert ckpt is not None and ckpt.name == "step_00000002"  # saved on Ctrl-C
    saved = json.loads((ckpt / "learner_state.json").read_text())
    assert saved["extra"]["global_step"] == 2 and saved["global_step"] == 2

    monkeypatch.setattr(Learner, "step", original)
    version = engine.policy_version
    result = train(
        _config(tiny_policy_path, tmp_path, "bon", "--total_steps", "3", resume=True), engine
    )
    assert result["step"] == 3
    # The checkpoint was pushed at start, then one sync for the one remaining step.
    assert engine.policy_version == version + 2
    state = json.loads(
        (latest_checkpoint(tmp_path / "checkpoints") / "learner_state.json").read_text()
    )
    assert state["global_step"] == 3  # optimizer steps continued from the checkpoint
    assert state["extra"]["sampler"]["position"] > saved["extra"]["sampler"]["position"]
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars(tags.LOSS_TOTAL)] == [1, 2, 3]


def test_evaluate_on_the_real_engine(vllm_engine):
    from langrl.agents.evaluation import EvalConfig, evaluate

    config = EvalConfig(k=2, num_problems=4, max_tokens=64, progress=False)
    result = evaluate(vllm_engine, "Countdown-v0", {}, None, config)
    assert result["eval/num_problems"] == 4
    for tag in (tags.EVAL_MEAN_AT_K, tags.EVAL_PASS_AT_K, tags.EVAL_FORMAT_OK_FRAC):
        assert 0.0 <= result[tag] <= 1.0
    assert result[tags.EVAL_PASS_AT_K] >= result[tags.EVAL_MEAN_AT_K]
    assert result["samples"]
