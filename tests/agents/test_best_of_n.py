"""Best-of-N agent: the max-reward sample becomes one trajectory with advantages=None."""

from __future__ import annotations

import asyncio

import pytest
from sampling_fakes import (
    CORRECT_A,
    CORRECT_B,
    MALFORMED,
    PROMPT_A,
    PROMPT_B,
    TASK_A,
    TASK_B,
    WRONG_A,
    ScriptedEngine,
)

from langrl.agents.best_of_n import BestOfNAgent, BestOfNConfig


def test_picks_the_max_reward_sample_per_prompt():
    engine = ScriptedEngine(
        {
            PROMPT_A: [MALFORMED, WRONG_A, CORRECT_A, WRONG_A],
            PROMPT_B: [MALFORMED, MALFORMED, CORRECT_B],
        }
    )
    agent = BestOfNAgent(BestOfNConfig(num_prompts=2, n=4), "Countdown-v0", {}, engine)
    batch = asyncio.run(agent.collect([TASK_A, TASK_B]))

    assert [t.info["text"] for t in batch.trajectories] == [CORRECT_A, CORRECT_B]
    for t in batch.trajectories:
        assert t.reward == 1.0
        assert t.advantages is None  # the learner computes r - V, as for MCTS
        assert t.agent == "bon"
        assert t.completion_ids == [ord(c) for c in t.info["text"]]
        assert t.behaviour_logprobs == [-0.5] * len(t.completion_ids)
    assert batch.metrics["train/best_reward_mean"] == 1.0
    assert batch.metrics["gen/samples"] == 8


def test_best_is_kept_even_when_wrong_unless_min_reward():
    engine = ScriptedEngine({PROMPT_A: [MALFORMED, WRONG_A]})
    batch = asyncio.run(
        BestOfNAgent(BestOfNConfig(n=2), "Countdown-v0", {}, engine).collect([TASK_A])
    )
    assert [t.reward for t in batch.trajectories] == pytest.approx([-1 / 3])
    batch = asyncio.run(
        BestOfNAgent(BestOfNConfig(n=2, min_reward=0.0), "Countdown-v0", {}, engine).collect(
            [TASK_A]
        )
    )
    assert batch.trajectories == []


def test_config_rejects_bad_n():
    with pytest.raises(ValueError, match="BestOfNConfig.n"):
        BestOfNConfig(n=0)
