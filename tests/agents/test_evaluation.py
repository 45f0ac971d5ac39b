"""Evaluation: mean@k / pass@k arithmetic with the sparse reward on a scripted engine."""

from __future__ import annotations

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

from langrl.agents.evaluation import EvalConfig, evaluate, mean_at_k


def test_mean_at_k_arithmetic():
    assert mean_at_k([[True, False, False, False], [False] * 4, [True] * 4]) == pytest.approx(
        ((0.25 + 0 + 1) / 3, 2 / 3)
    )
    assert mean_at_k([]) == (0.0, 0.0)


def test_evaluate_scores_samples_with_the_sparse_reward():
    # A: 2 of 4 correct, 1 wrong (format ok), 1 malformed; B: all malformed.
    engine = ScriptedEngine(
        {PROMPT_A: [CORRECT_A, WRONG_A, CORRECT_A, MALFORMED], PROMPT_B: [MALFORMED]}
    )
    cfg = EvalConfig(k=4, progress=False)
    result = evaluate(engine, "Countdown-v0", {"reward": "dense"}, [TASK_A, TASK_B], cfg)
    assert result["eval/mean_at_k"] == pytest.approx((0.5 + 0.0) / 2)
    assert result["eval/pass_at_k"] == pytest.approx(0.5)
    assert result["eval/format_ok_frac"] == pytest.approx(3 / 8)
    # Sparse reward, whatever the env_kwargs said: the mean reward equals mean@k.
    assert result["eval/reward_mean"] == pytest.approx(result["eval/mean_at_k"])
    assert result["eval/num_problems"] == 2
    for _, sampling in engine.requests:
        assert (sampling.n, sampling.temperature) == (4, 0.2)


def test_default_tasks_are_the_first_problems_of_the_test_split():
    engine = ScriptedEngine({}, default=[MALFORMED])
    result = evaluate(
        engine, "Countdown-v0", {}, None, EvalConfig(k=2, num_problems=5, progress=False)
    )
    assert result["eval/num_problems"] == 5
    assert result["eval/mean_at_k"] == 0.0
    assert len(engine.requests) == 5


def test_config_defaults_follow_the_paper_and_reject_bad_values():
    cfg = EvalConfig()
    assert (cfg.k, cfg.temperature, cfg.reward, cfg.split) == (16, 0.2, "sparse", "test")
    with pytest.raises(ValueError, match="EvalConfig.k"):
        EvalConfig(k=0)
    with pytest.raises(ValueError, match="EvalConfig.split"):
        EvalConfig(split="dev")
