"""CISPO agent: group-relative advantages, zero-variance filtering, ids/logprobs carried."""

from __future__ import annotations

import asyncio

import pytest
from sampling_fakes import (
    CORRECT_A,
    MALFORMED,
    PROMPT_A,
    PROMPT_B,
    TASK_A,
    TASK_B,
    WRONG_A,
    ScriptedEngine,
)

from langrl.agents.cispo import CISPOAgent, CISPOConfig, group_advantages


def _collect(agent, tasks):
    return asyncio.run(agent.collect(tasks))


def test_group_advantages_are_mean_centred():
    adv, std = group_advantages([1.0, 0.0, 0.0, 1.0])
    assert adv == [0.5, -0.5, -0.5, 0.5]
    assert std == pytest.approx(0.5)
    scaled, _ = group_advantages([1.0, 0.0, 0.0, 1.0], std_scaling=True, std_eps=0.0)
    assert scaled == pytest.approx([1.0, -1.0, -1.0, 1.0])


def test_collect_emits_group_relative_per_token_advantages():
    # Group A has rewards [1, -1/3, 1, -1]; group B is all malformed (zero variance).
    engine = ScriptedEngine(
        {PROMPT_A: [CORRECT_A, WRONG_A, CORRECT_A, MALFORMED], PROMPT_B: [MALFORMED]}
    )
    agent = CISPOAgent(CISPOConfig(num_prompts=2, group_size=4), "Countdown-v0", {}, engine)
    batch = _collect(agent, [TASK_A, TASK_B])

    assert len(batch.trajectories) == 4  # only group A survives
    rewards = [t.reward for t in batch.trajectories]
    assert rewards == pytest.approx([1.0, -1 / 3, 1.0, -1.0])
    mean = sum(rewards) / 4
    for t, r in zip(batch.trajectories, rewards, strict=True):
        assert t.advantages == pytest.approx([r - mean] * len(t.completion_ids))
        assert t.agent == "cispo"
        assert t.policy_version == 3
        assert t.prompt_ids == [ord(c) for c in PROMPT_A]
        assert t.completion_ids == [ord(c) for c in t.info["text"]]  # the sampled ids, as is
        assert t.behaviour_logprobs == [-0.5] * len(t.completion_ids)
    assert sum(t.advantages[0] for t in batch.trajectories) == pytest.approx(0.0)

    m = batch.metrics
    assert m["gen/zero_variance_groups"] == 1
    assert m["gen/zero_variance_frac"] == 0.5
    assert m["gen/samples"] == 8
    assert m["train/correct_frac"] == pytest.approx(2 / 8)
    assert m["train/format_ok_frac"] == pytest.approx(3 / 8)
    assert m["train/reward_mean"] == pytest.approx((1 - 1 / 3 + 1 - 1 - 4) / 8)
    assert batch.samples and batch.samples[0].startswith(PROMPT_A)


def test_requests_use_config_sampling():
    engine = ScriptedEngine({PROMPT_A: [CORRECT_A, WRONG_A]})
    cfg = CISPOConfig(num_prompts=1, group_size=6, max_tokens=33, temperature=0.7, seed=5)
    batch = _collect(CISPOAgent(cfg, "Countdown-v0", {}, engine), [TASK_A])
    ((_, sampling),) = engine.requests
    assert (sampling.n, sampling.max_tokens, sampling.temperature) == (6, 33, 0.7)
    # The trajectories say what they were sampled at: the learner scores them there.
    assert batch.trajectories and all(t.temperature == 0.7 for t in batch.trajectories)
    assert sampling.seed is not None and "</answer>" in sampling.stop


def test_all_groups_zero_variance_gives_empty_batch():
    engine = ScriptedEngine({}, default=[CORRECT_A])
    batch = _collect(CISPOAgent(CISPOConfig(group_size=3), "Countdown-v0", {}, engine), [TASK_A])
    assert batch.trajectories == []
    assert batch.metrics["gen/zero_variance_groups"] == 1


def test_zero_variance_groups_can_be_kept_with_zero_advantages():
    engine = ScriptedEngine({}, default=[MALFORMED])
    cfg = CISPOConfig(group_size=3, filter_zero_variance=False)
    batch = asyncio.run(CISPOAgent(cfg, "Countdown-v0", {}, engine).collect([TASK_A]))
    assert len(batch.trajectories) == 3
    assert all(set(t.advantages) == {0.0} for t in batch.trajectories)
    assert batch.metrics["gen/zero_variance_groups"] == 1


@pytest.mark.parametrize(
    "field, value", [("group_size", 1), ("num_prompts", 0), ("temperature", 0.0), ("max_tokens", 0)]
)
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"CISPOConfig.{field}"):
        CISPOConfig(**{field: value})
