"""Countdown-v0: prompts, grading, rewards, step checks, solver, generator, data contract."""

from __future__ import annotations

from fractions import Fraction

import gymnasium as gym
import pytest
from envtest_helpers import COUNTDOWN_TASK

import langrl.envs.countdown as countdown_module
from langrl.envs import CountdownEnv, RewardConfig
from langrl.envs.countdown import (
    CountdownGeneratorConfig,
    CountdownTask,
    check_step,
    generate_task,
    generate_tasks,
    grade_answer,
    load_countdown,
    solution_steps,
    solve,
)


def test_prompt_and_reset_info(countdown):
    obs, info = countdown.reset(options=COUNTDOWN_TASK)
    assert obs == "Numbers: 3 5 7 2\nTarget: 24\n"
    assert info["prompt"] == obs
    assert info["task"] == {"numbers": [3, 5, 7, 2], "target": 24}
    assert info["index"] is None
    system, user = info["messages"]
    assert system["role"] == "system" and user == {"role": "user", "content": obs}
    for must in (
        "<step></step>",
        "<answer></answer>",
        "one step per tag",
        "<step>7 * 4 = 28</step>",
    ):
        assert must in system["content"]
    obs, info = countdown.reset(options={"index": 0})
    assert info["index"] == 0 and obs.startswith("Numbers: ")


def test_transcript_is_prompt_plus_actions_verbatim(countdown):
    prompt, _ = countdown.reset(options=COUNTDOWN_TASK)
    actions = [
        "<step>7 * 3 = 21</step>",
        "\n <step>21 + 5 = 26</step>\n",
        "<answer>7*3+5-2</answer>",
    ]
    for action in actions:
        obs, *_ = countdown.step(action)
    assert obs == prompt + "".join(actions)
    assert countdown.get_state().actions == tuple(actions)


@pytest.mark.parametrize(
    ("answer", "dense", "sparse", "reason"),
    [
        ("(7 * 3) + 5 - 2", 1.0, 1.0, "correct"),
        ("7 * 3 + 5", 1 - 2 * 2 / 24, 0.0, "wrong_value"),  # 26: off by 2
        ("3 * 5", 1 - 2 * 9 / 24, 0.0, "wrong_value"),  # subset of numbers is legal
        ("7 * 5 * 3 * 2", -1.0, 0.0, "wrong_value"),  # 210: distance capped at 1
        ("7 / 2", 1 - 2 * Fraction(41, 48), 0.0, "wrong_value"),  # fractional value
        ("7 * 7 - 25", -1.0, 0.0, "bad_numbers"),  # 7 reused, 25 not given
        ("(7 * 4) - 5 + 1", -1.0, 0.0, "bad_numbers"),
        ("7 * 3 + 5 - 2 = 24", -1.0, 0.0, "invalid_character"),
        ("2 ** 5", -1.0, 0.0, "parse_error"),
        ("3 / (5 - 5)", -1.0, 0.0, "division_by_zero"),  # evaluation fails before the count
        ("7 / (5 - 3 - 2)", -1.0, 0.0, "division_by_zero"),
    ],
)
def test_answer_rewards_dense_and_sparse(answer, dense, sparse, reason):
    for mode, expected in (("dense", dense), ("sparse", sparse)):
        env = CountdownEnv(reward=mode)
        env.reset(options=COUNTDOWN_TASK)
        _, reward, terminated, truncated, info = env.step(f"<answer>{answer}</answer>")
        assert (terminated, truncated) == (True, False)
        assert info["reason"] == reason, info
        assert reward == pytest.approx(float(dense if mode == "dense" else sparse))
        assert reward == pytest.approx(float(expected))
        assert info["is_correct"] is (reason == "correct")


def test_parsed_value_and_detail_reported(countdown):
    countdown.reset(options=COUNTDOWN_TASK)
    *_, info = countdown.step("<answer>7 / 2</answer>")
    assert info["value"] == Fraction(7, 2) and info["detail"] == "= 7/2"
    countdown.reset(options=COUNTDOWN_TASK)
    *_, info = countdown.step("<answer>7 * 7</answer>")
    assert info["reason"] == "bad_numbers" and "7" in info["detail"] and info["value"] == 49


def test_use_all_numbers():
    env = CountdownEnv(use_all_numbers=True, reward="sparse")
    _, info = env.reset(options=COUNTDOWN_TASK)
    assert "exactly once" in info["messages"][0]["content"]
    _, reward, _, _, info = env.step("<answer>7 * 3 + 5 - 2</answer>")
    assert (reward, info["reason"]) == (1.0, "correct")
    env.reset(options={"numbers": [3, 5, 7, 2], "target": 15})
    _, reward, _, _, info = env.step("<answer>3 * 5</answer>")
    assert (reward, info["reason"]) == (0.0, "bad_numbers")
    assert "2, 7" in info["detail"]


def test_custom_reward_config_and_process_signal():
    config = RewardConfig(correct_reward=2.0, format_failure_reward=-3.0, invalid_step_reward=-0.1)
    env = CountdownEnv(reward=config)
    env.reset(options=COUNTDOWN_TASK)
    assert env.step("<step>7 * 3 = 21</step>")[1] == 0.0
    _, reward, *_, info = env.step("<step>21 + 5 = 27</step>")
    assert info["step_check"] == "arith_error" and reward == pytest.approx(-0.1)
    assert env.step("<answer>(7 * 3) + 5 - 2</answer>")[1] == 2.0
    env.reset(options=COUNTDOWN_TASK)
    assert env.step("<answer>nope</answer>")[1] == -3.0
    with pytest.raises(ValueError, match="reward must be one of"):
        CountdownEnv(reward="shaped")
    with pytest.raises(ValueError, match="must be a number"):
        RewardConfig(correct_reward="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        RewardConfig(wrong_reward=float("nan"))


def test_reward_fields_as_a_mapping_from_a_preset():
    # YAML presets and --env_kwargs.reward give named fields, not a RewardConfig instance.
    env = gym.make("Countdown-v0", reward={"wrong_reward": 0.0, "format_failure_reward": -1.0})
    env.reset(options=COUNTDOWN_TASK)
    assert env.step("<answer>7 * 3 + 5</answer>")[1] == 0.0  # wrong value, no shaping
    env.reset(options=COUNTDOWN_TASK)
    assert env.step("<answer>nope</answer>")[1] == -1.0
    with pytest.raises(ValueError, match=r"unknown RewardConfig fields \['wrong'\]"):
        CountdownEnv(reward={"wrong": 0.0})


def test_default_step_reward_unchanged_by_step_checks(countdown):
    countdown.reset(options=COUNTDOWN_TASK)
    for step, verdict in [
        ("<step>7 * 3 = 21</step>", "ok"),
        ("<step>21 + 5 = 27</step>", "arith_error"),
        ("<step>21 + 9 = 30</step>", "unavailable_number"),
        ("<step>21 + 5 + 2 = 28</step>", "not_binary"),
        ("<step>let me think</step>", "parse_error"),
        ("<step>21 + 5 = 26</step>", "ok"),
        ("<step>26 - 2 = 24</step>", "ok"),
    ]:
        _, reward, terminated, truncated, info = countdown.step(step)
        assert (reward, terminated, truncated) == (0.0, False, False)
        assert info["step_check"] == verdict, (step, info)
        assert info["reason"] == "step"
    assert countdown.get_state().progress == (24,)


def test_check_step_fractions_and_negatives():
    assert check_step("7 / 2 = 7/2", (7, 2, 3)) == ("ok", "", (3, Fraction(7, 2)))
    assert check_step("(7/2) * 4 = 14", (Fraction(7, 2), 4))[::2] == ("ok", (14,))
    assert check_step("3 - 5 = -2", (3, 5))[::2] == ("ok", (-2,))
    assert check_step("(-2) * 4 = -8", (-2, 4))[::2] == ("ok", (-8,))
    assert check_step("7 * 4 = 28 = 28", (7, 4))[0] == "parse_error"
    assert check_step("7 = 7", (7,))[0] == "not_binary"


def test_solver_examples():
    assert solve([7, 4, 5, 1], 24) is not None
    assert solve([1, 1], 5) is None
    assert solution_steps([1, 1], 5) is None
    assert solution_steps([4, 9], 9) == ["<answer>9</answer>"]
    # needs a fractional intermediate: 4 / (1 - 5/6) = 24 (each number once)
    expr = solve([4, 1, 5, 6], 24, use_all_numbers=True)
    assert expr is not None and grade_answer(expr, CountdownTask((4, 1, 5, 6), 24)).correct
    steps = solution_steps([4, 1, 5, 6], 24, use_all_numbers=True)
    env = CountdownEnv(use_all_numbers=True)
    env.reset(options={"numbers": [4, 1, 5, 6], "target": 24})
    for action in steps[:-1]:
        assert env.step(action)[-1]["step_check"] == "ok", action
    assert env.step(steps[-1])[1] == 1.0
    # deterministic, and solve() agrees with the trace's answer
    assert solution_steps([3, 5, 7, 2], 24) == solution_steps([3, 5, 7, 2], 24)
    assert solution_steps([3, 5, 7, 2], 24)[-1] == f"<answer>{solve([3, 5, 7, 2], 24)}</answer>"


def test_every_test_problem_solved_and_replayed_through_env():
    """Contract: all 820 Countdown test problems get a solver solution that scores 1.0,
    and the step-by-step trace, fed action by action, checks ok and scores 1.0.

    The solver's work is bounded as a count, not a time: from a cold cache the 820 problems
    visit at most 100,000 search states (about 56,000 today; a lost memo key or a search
    that tries fractions first multiplies them). benchmarks/bench_graders.py times it."""
    tasks = load_countdown("test")
    assert len(tasks) == 820
    env = gym.make("Countdown-v0", split="test", reward="dense").unwrapped
    countdown_module._solution.cache_clear()
    countdown_module._search.cache_clear()  # a cold cache: its misses count the states searched
    for i, task in enumerate(tasks):
        expr = solve(task.numbers, task.target)
        assert expr is not None, task
        env.reset(options={"index": i})
        *_, reward, terminated, _, info = env.step(f"<answer>{expr}</answer>")
        assert (reward, terminated) == (1.0, True), (task, expr, info)
        actions = solution_steps(task.numbers, task.target)
        env.reset(options={"index": i})
        for action in actions[:-1]:
            *_, reward, terminated, truncated, info = env.step(action)
            assert info["step_check"] == "ok" and not (terminated or truncated), (task, action)
        *_, reward, terminated, _, info = env.step(actions[-1])
        assert (reward, terminated, info["reason"]) == (1.0, True, "correct"), (task, actions)
    searched = countdown_module._search.cache_info().misses
    assert searched <= 100_000, f"{searched:,} search states for 820 problems"


def test_every_test_problem_solvable_using_all_numbers():
    for task in load_countdown("test"):
        expr = solve(task.numbers, task.target, use_all_numbers=True)
        assert grade_answer(expr, task, use_all_numbers=True).correct, (task, expr)


def test_generator_is_reproducible_per_item_and_solvable():
    config = CountdownGeneratorConfig(seed=11)
    tasks = generate_tasks(config, 200)
    assert tasks == generate_tasks(config, 200)
    assert generate_task(config, 137) == tasks[137]  # item i on its own
    assert generate_tasks(CountdownGeneratorConfig(seed=12), 5) != tasks[:5]
    for task in tasks:
        assert len(task.numbers) == 4 and all(1 <= n <= 13 for n in task.numbers)
        assert 1 <= task.target <= config.max_target
        assert solve(task.numbers, task.target, use_all_numbers=True) is not None
    env = CountdownEnv(tasks=tasks)
    obs, info = env.reset(seed=0)
    assert CountdownTask(tuple(info["task"]["numbers"]), info["task"]["target"]) in tasks


@pytest.mark.parametrize(
    "bad",
    [
        {"num_numbers": 1},
        {"min_number": 0},
        {"min_number": 9, "max_number": 3},
        {"min_target": 10, "max_target": 5},
        {"seed": 1.5},
        {"max_attempts": 0},
    ],
)
def test_generator_config_validation(bad):
    with pytest.raises(ValueError):
        CountdownGeneratorConfig(**bad)


@pytest.mark.parametrize(
    "options",
    [
        {"numbers": [3, 5], "target": 0},
        {"numbers": [3, -5], "target": 2},
        {"numbers": "35", "target": 2},
        {"numbers": [3, 5]},
        {"numbers": [3, 5], "target": 8, "extra": 1},
        {"index": 10**9},
        {"index": 0, "target": 3},
    ],
)
def test_bad_reset_options(countdown, options):
    with pytest.raises(ValueError):
        countdown.reset(options=options)


def test_data_path_and_env_var(tmp_path, monkeypatch):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"input": [1, 2], "target": 3}\n\n{"input": [4, 4], "target": 16}\n')
    env = CountdownEnv(data_path=path)
    seen = {env.reset(seed=s)[0] for s in range(20)}
    assert seen == {"Numbers: 1 2\nTarget: 3\n", "Numbers: 4 4\nTarget: 16\n"}
    (tmp_path / "countdown").mkdir()
    (tmp_path / "countdown" / "test.jsonl").write_text('{"input": [6, 7], "target": 42}\n')
    monkeypatch.setenv("LANGRL_DATA", str(tmp_path))
    assert CountdownEnv(split="test").reset(seed=0)[0] == "Numbers: 6 7\nTarget: 42\n"
    with pytest.raises(FileNotFoundError, match="LANGRL_DATA"):
        CountdownEnv(split="train").reset(seed=0)
    monkeypatch.setenv("LANGRL_DATA", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="LANGRL_DATA"):
        CountdownEnv().reset(seed=0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": [1, "x"], "target": 3}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        CountdownEnv(data_path=bad).reset(seed=0)
    with pytest.raises(ValueError, match="split"):
        CountdownEnv(split="validation")
