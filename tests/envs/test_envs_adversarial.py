"""Adversarial corpus (shared with benchmarks/bench_graders.py): every input gets the
failure reward of its mode and a reason, cheaply.

"Cheaply" is asserted as bounded work (``python_work``: Python lines executed plus calls,
the same on an idle and on a loaded machine), and an oversized action never reaching the
parser; the time per step (target: under 10 ms) is measured by benchmarks/bench_graders.py.
"""

from __future__ import annotations

from functools import partial

import pytest
from envtest_helpers import python_work

import langrl.envs.base as env_base
from langrl.envs import CountdownEnv, GSM8KEnv
from langrl.envs.adversarial import CASES, COUNTDOWN_TASK, GSM8K_TASK
from langrl.envs.gsm8k import check_step as gsm8k_check_step

ENVS = {"countdown": (CountdownEnv, COUNTDOWN_TASK), "gsm8k": (GSM8KEnv, GSM8K_TASK)}

#: Most work (``python_work``) one adversarial step may do. The corpus takes at most ~1,300,
#: a 1,000-character step through GSM8K's checker ~4,600; one pass of a Python loop over a
#: million-character input, or quadratic work on a 1,000-character one, is over 1,000,000.
MAX_WORK = 20_000


def _never_parsed(action: str, *args: object) -> tuple[str, str]:
    raise AssertionError(f"a {len(action):,}-character action reached the parser")


def _measured_step(env, task: dict, action: str) -> tuple[tuple, int]:
    """``env.step(action)`` after ``env.reset(options=task)``, and its work. A first step
    warms the caches (compiled regular expressions) so that only the step itself counts."""
    env.reset(options=task)
    env.step(action)
    env.reset(options=task)
    return python_work(partial(env.step, action))


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.env}-{c.name}")
def test_adversarial_input_fails_cheaply_with_reason(case, monkeypatch):
    cls, task = ENVS[case.env]
    if case.reason == "action_too_long":  # refused on its length alone, before any parsing
        monkeypatch.setattr(env_base, "parse_action", _never_parsed)
    for mode in ("dense", "sparse"):
        env = cls(reward=mode)
        failure = (
            env.reward_config.no_answer_reward
            if case.reason == "no_answer"
            else env.reward_config.format_failure_reward
        )
        (obs, reward, terminated, truncated, info), work = _measured_step(env, task, case.action)
        assert terminated and not truncated
        assert info["reason"] == case.reason, info
        assert info["detail"] or case.reason == "no_answer"
        assert reward == failure == (-1.0 if mode == "dense" else 0.0)
        assert not info["is_correct"]
        assert env.observation_space.contains(obs)
        assert work <= MAX_WORK, f"{case.name}: {work:,} lines executed and calls made"


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
        (_, reward, terminated, _, info), work = _measured_step(env, task, f"<step>{step}</step>")
        assert work <= MAX_WORK, f"{type(env).__name__}: {work:,} lines executed and calls made"
        assert (reward, terminated) == (0.0, False) and info["step_check"]
    gsm8k_check_step(step)  # warm-up, as in _measured_step
    _, work = python_work(partial(gsm8k_check_step, step))
    assert work <= MAX_WORK, f"gsm8k check_step: {work:,} lines executed and calls made"


@pytest.mark.parametrize(
    "step",
    [
        # Aimed at GSM8K's symbolic reader (sympy built from a whitelist parse): refused by
        # its bounds before sympy, or a bounded number of small sympy calls. Under 1,024
        # characters, so that CountdownEnv parses them too.
        "x^99999999 = x",
        "2^99999999 * x = 2",
        "(" * 450 + "x" + ")" * 450 + " = x",
        "-" * 1000 + "x = x",
        "+".join("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ" * 9) + " = 1",
        " + ".join(f"{i} apples" for i in range(80)) + " = 5 apples",
        "2x + 3x = 5x, " * 70,
    ],
)
def test_symbolic_adversarial_steps_are_cheap(step):
    assert len(step) <= 1024
    for env, task in ((CountdownEnv(), COUNTDOWN_TASK), (GSM8KEnv(), GSM8K_TASK)):
        (_, reward, terminated, _, info), work = _measured_step(env, task, f"<step>{step}</step>")
        assert work <= MAX_WORK, f"{type(env).__name__}: {work:,} lines executed and calls made"
        assert (reward, terminated) == (0.0, False) and info["step_check"]
