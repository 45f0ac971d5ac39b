"""Evaluation: mean@k / pass@k arithmetic with the sparse reward on a scripted engine."""

from __future__ import annotations

import math

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

from langrl.agents.evaluation import (
    EvalConfig,
    evaluate,
    mean_at_k,
    mean_ci95,
    paired_diff_ci95,
)
from langrl.metrics import TAGS


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
    # Per-problem counts in task order; tasks given by content are numbered by position.
    assert result["per_problem_correct"] == [2, 0]
    assert result["task_indices"] == [0, 1]
    # Fractions (.5, 0): s = sqrt(.125), half-width 1.96 * s / sqrt(2) = 1.96 * .25.
    assert result["eval/mean_at_k_ci95"] == pytest.approx(0.49)
    # Passed (1, 0): s = sqrt(.5), half-width 1.96 * sqrt(.5 / 2) = .98.
    assert result["eval/pass_at_k_ci95"] == pytest.approx(0.98)
    # Only scalars have a "group/name" key (callers log those as TensorBoard scalars).
    scalars = {key: v for key, v in result.items() if "/" in key}
    assert all(isinstance(v, float) for v in scalars.values())
    assert set(scalars) <= set(TAGS)  # each one documented in langrl.metrics


def test_eval_env_kwargs_override_the_runs_for_grading():
    # (7 + 5) * 2 = 24 uses three of the four numbers: correct by the usual rule, illegal
    # under use_all_numbers. A run trained under the strict rule is scored by the usual
    # one when EvalConfig.env_kwargs says so.
    subset_a = "<answer>(7 + 5) * 2</answer>"
    engine = ScriptedEngine({PROMPT_A: [subset_a]})
    strict = {"use_all_numbers": True}
    inherited = evaluate(engine, "Countdown-v0", strict, [TASK_A], EvalConfig(k=1, progress=False))
    assert inherited["eval/mean_at_k"] == 0.0
    usual = EvalConfig(k=1, progress=False, env_kwargs={"use_all_numbers": False})
    assert evaluate(engine, "Countdown-v0", strict, [TASK_A], usual)["eval/mean_at_k"] == 1.0
    assert usual.env_kwargs_over(strict) == {
        "use_all_numbers": False,
        "split": "test",
        "reward": "sparse",
    }
    # split and reward have their own fields; a second way to set them is refused.
    for name in ("split", "reward"):
        with pytest.raises(ValueError, match=f"EvalConfig.env_kwargs must not set '{name}'"):
            EvalConfig(env_kwargs={name: "train"})


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


def test_mean_ci95_matches_a_hand_computed_interval():
    # mean .5; sample variance (.25 + 0 + .25 + 0) / 3 = 1/6; half = 1.96 * sqrt(1/6 / 4).
    mean, half = mean_ci95([0.0, 0.5, 1.0, 0.5])
    assert mean == pytest.approx(0.5)
    assert half == pytest.approx(0.400083, abs=1e-6)
    assert mean_ci95([1.0, 1.0, 1.0]) == (1.0, 0.0)
    one = mean_ci95([0.3])
    assert one[0] == 0.3 and math.isnan(one[1])  # no spread to estimate from one value
    assert all(math.isnan(x) for x in mean_ci95([]))


def test_paired_diff_ci95_is_the_interval_of_the_per_problem_differences():
    # d = (.5, 0, .25): mean .25, sample variance (.0625 + .0625 + 0) / 2, s = .25.
    diff, half = paired_diff_ci95([1.0, 0.5, 0.25], [0.5, 0.5, 0.0])
    assert diff == pytest.approx(0.25)
    assert half == pytest.approx(1.96 * 0.25 / math.sqrt(3))
    # A constant gain on every problem is certain, however spread the problems are.
    assert paired_diff_ci95([0.9, 0.1, 0.5], [0.8, 0.0, 0.4]) == pytest.approx((0.1, 0.0))
    with pytest.raises(ValueError, match="same problems"):
        paired_diff_ci95([1.0], [1.0, 0.0])


def _default_eval(**config):
    engine = ScriptedEngine({}, default=[MALFORMED])
    cfg = EvalConfig(k=1, progress=False, seed=3, **config)
    result = evaluate(engine, "Countdown-v0", {}, None, cfg)
    return result, engine


def test_first_problem_selects_a_slice_and_negative_counts_from_the_end():
    result, _ = _default_eval(first_problem=5, num_problems=3)
    assert result["task_indices"] == [5, 6, 7]
    assert result["eval/num_problems"] == 3
    # The last problems of the split (820 test problems), to its end.
    result, _ = _default_eval(first_problem=-3, num_problems=None)
    assert result["task_indices"] == [817, 818, 819]
    result, _ = _default_eval(first_problem=-2, num_problems=10)  # clipped at the end
    assert result["task_indices"] == [818, 819]
    with pytest.raises(ValueError, match="EvalConfig.first_problem"):
        _default_eval(first_problem=820)
    with pytest.raises(ValueError, match="EvalConfig.first_problem"):
        _default_eval(first_problem=-821)
    with pytest.raises(ValueError, match="EvalConfig.first_problem"):
        EvalConfig(first_problem=1.5)


def test_a_problem_gets_the_same_sampling_seed_in_overlapping_slices():
    _, a = _default_eval(first_problem=5, num_problems=3)
    _, b = _default_eval(first_problem=6, num_problems=2)
    seeds_a = {text: s.seed for text, s in a.requests}
    seeds_b = {text: s.seed for text, s in b.requests}
    assert len(set(seeds_a.values())) == 3
    assert seeds_b == {text: seeds_a[text] for text in seeds_b}
