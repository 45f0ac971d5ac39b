"""Adversarial corpus (shared with benchmarks/bench_graders.py): every input gets the
failure reward of its mode and a reason, fast."""

from __future__ import annotations

import time

import pytest

from langrl.envs import CountdownEnv, GSM8KEnv
from langrl.envs.adversarial import CASES, COUNTDOWN_TASK, GSM8K_TASK, MAX_SECONDS
from langrl.envs.gsm8k import check_step as gsm8k_check_step

ENVS = {"countdown": (CountdownEnv, COUNTDOWN_TASK), "gsm8k": (GSM8KEnv, GSM8K_TASK)}


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.env}-{c.name}")
def test_adversarial_input_fails_fast_with_reason(case):
    cls, task = ENVS[case.env]
    for mode in ("dense", "sparse"):
        env = cls(reward=mode)
        failure = (
            env.reward_config.no_answer_reward
            if case.reason == "no_answer"
            else env.reward_config.format_failure_reward
        )
        timings = []
        for _ in range(3):  # best of 3: the bound is on the work, not on scheduler noise
            env.reset(options=task)
            start = time.perf_counter()
            obs, reward, terminated, truncated, info = env.step(case.action)
            timings.append(time.perf_counter() - start)
        assert terminated and not truncated
        assert info["reason"] == case.reason, info
        assert info["detail"] or case.reason == "no_answer"
        assert reward == failure == (-1.0 if mode == "dense" else 0.0)
        assert not info["is_correct"]
        assert env.observation_space.contains(obs)
        assert min(timings) < MAX_SECONDS, f"{case.name}: {min(timings) * 1e3:.2f} ms"


def test_corpus_covers_the_required_attacks():
    names = {c.name for c in CASES}
    for required in (
        "division_by_zero",
        "giant_literal",
        "dunder_import",
        "arabic_indic_digits",
        "fullwidth_digits",
        "deep_parentheses",
        "million_char_answer",
        "power_operator",
    ):
        assert required in names


@pytest.mark.parametrize(
    "step",
    [
        # all under CountdownEnv's 1,024-character action limit, so they are really parsed
        "=" * 1000,
        ("1+" * 30 + "1=") * 15,
        "(" * 990 + "1 + 1 = 2",
        "9" * 990 + " * 9 = 1",
        "1 / 0 = 5 " * 99,
    ],
)
def test_adversarial_steps_are_cheap(step):
    for env, task in ((CountdownEnv(), COUNTDOWN_TASK), (GSM8KEnv(), GSM8K_TASK)):
        env.reset(options=task)
        start = time.perf_counter()
        _, reward, terminated, _, info = env.step(f"<step>{step}</step>")
        assert time.perf_counter() - start < MAX_SECONDS
        assert (reward, terminated) == (0.0, False) and info["step_check"]
    start = time.perf_counter()
    gsm8k_check_step(step)
    assert time.perf_counter() - start < MAX_SECONDS
