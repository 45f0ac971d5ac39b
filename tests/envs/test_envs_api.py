"""API behaviour: action parsing, split_actions, misuse errors, rendering."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from envtest_helpers import COUNTDOWN_TASK

from langrl.envs import CountdownEnv, parse_action, split_actions


@pytest.mark.parametrize(
    ("action", "kind", "content"),
    [
        ("<step>7 * 4 = 28</step>", "step", "7 * 4 = 28"),
        ("  \n<step>x</step>\n\t", "step", "x"),
        ("<answer> 24 </answer>", "answer", " 24 "),
        ("<step></step>", "step", ""),
        ("", "empty", ""),
        (" \n ", "empty", ""),
        ("<step>7 * 4", "malformed", "<step>7 * 4"),
        ("<step>a</step><step>b</step>", "malformed", "<step>a</step><step>b</step>"),
        ("<step>a</answer>", "malformed", "<step>a</answer>"),
        ("x <answer>1</answer>", "malformed", "x <answer>1</answer>"),
        ("<answer>1</answer> x", "malformed", "<answer>1</answer> x"),
    ],
)
def test_parse_action(action, kind, content):
    assert parse_action(action) == (kind, content)


def test_split_actions():
    text = "<step>7 * 4 = 28</step>\n<step>28 - 5 = 23</step> <answer>7 * 4 - 5</answer>\nbye"
    actions = split_actions(text)
    assert actions == [
        "<step>7 * 4 = 28</step>",
        "\n<step>28 - 5 = 23</step>",
        " <answer>7 * 4 - 5</answer>",
    ]
    assert "".join(actions) == text[: text.index("</answer>") + len("</answer>")]
    assert split_actions("<step>1 + 2 = 3</step><step>3 *") == [
        "<step>1 + 2 = 3</step>",
        "<step>3 *",
    ]
    assert split_actions("no tags at all") == ["no tags at all"]
    assert split_actions("<step>a</step>\n") == ["<step>a</step>", "\n"]
    assert split_actions("") == []
    assert split_actions("<answer>1</answer><step>ignored</step>") == ["<answer>1</answer>"]
    with pytest.raises(TypeError):
        split_actions(None)  # type: ignore[arg-type]


def test_split_actions_through_env_matches_the_text():
    env = CountdownEnv()
    prompt, _ = env.reset(options=COUNTDOWN_TASK)
    completion = "<step>7 * 3 = 21</step>\n<step>21 + 5 = 26</step>\n<answer>7*3+5-2</answer>"
    for action in split_actions(completion):
        obs, reward, terminated, truncated, info = env.step(action)
    assert obs == prompt + completion
    assert (reward, terminated, info["reason"]) == (1.0, True, "correct")
    # a completion cut off by the token limit ends malformed
    env.reset(options=COUNTDOWN_TASK)
    for action in split_actions("<step>7 * 3 = 21</step><step>21 + 5 ="):
        *_, reward, terminated, _, info = env.step(action)
    assert (reward, terminated, info["reason"]) == (-1.0, True, "malformed_action")


def test_step_before_reset():
    with pytest.raises(RuntimeError, match=r"call reset\(\) before step\(\)"):
        CountdownEnv().step("<answer>1</answer>")
    with pytest.raises(RuntimeError, match="reset"):
        CountdownEnv().get_state()


def test_step_after_end():
    for ending in ("<answer>1</answer>", "<step>cut", ""):
        env = CountdownEnv()
        env.reset(options=COUNTDOWN_TASK)
        env.step(ending)
        with pytest.raises(RuntimeError, match=r"call reset\(\)"):
            env.step("<answer>1</answer>")
    env = CountdownEnv(max_steps=1)
    env.reset(options=COUNTDOWN_TASK)
    env.step("<step>x</step>")
    with pytest.raises(RuntimeError, match="truncated"):
        env.step("<answer>1</answer>")


@pytest.mark.parametrize(
    "action", [b"<answer>1</answer>", 1, None, ["<answer>1</answer>"], np.array([1])]
)
def test_non_string_action(action):
    env = CountdownEnv()
    env.reset(options=COUNTDOWN_TASK)
    with pytest.raises(TypeError, match="split_actions"):
        env.step(action)
    # the episode is untouched by the rejected call
    assert env.step(np.str_("<answer>7 * 3 + 5 - 2</answer>"))[1] == 1.0


def test_constructor_validation():
    for kwargs in (
        {"max_steps": 0},
        {"max_action_chars": 0},
        {"max_observation_chars": -1},
        {"render_mode": "rgb_array"},
        {"tasks": []},
        {"tasks": [{"numbers": [1], "target": 1}]},
    ):
        with pytest.raises(ValueError):
            CountdownEnv(**kwargs)


def test_context_limit_truncates_without_growing_the_observation():
    env = CountdownEnv(max_observation_chars=60, max_action_chars=30)  # prompt: 28
    prompt, _ = env.reset(options=COUNTDOWN_TASK)
    obs, reward, terminated, truncated, info = env.step("<step>7 * 3 = 21</step>")
    obs, reward, terminated, truncated, info = env.step("<step>21 + 5 = 26</step>")
    assert (terminated, truncated, info["reason"], reward) == (False, True, "context_limit", -1.0)
    assert obs == prompt + "<step>7 * 3 = 21</step>" and env.observation_space.contains(obs)
    with pytest.raises(ValueError, match="max_observation_chars"):
        CountdownEnv(max_observation_chars=10).reset(options=COUNTDOWN_TASK)


def test_render_modes(capsys):
    env = CountdownEnv(render_mode="ansi")
    prompt, _ = env.reset(options=COUNTDOWN_TASK)
    env.step("<step>7 * 3 = 21</step>")
    assert env.render() == prompt + "<step>7 * 3 = 21</step>"
    human = gym.make("Countdown-v0", render_mode="human")
    human.reset(options=COUNTDOWN_TASK)
    assert "Target: 24" in capsys.readouterr().out
