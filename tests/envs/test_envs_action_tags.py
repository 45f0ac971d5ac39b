"""Action tags are the env's: ``ActionTags`` on ``ReasoningEnv.ACTION_TAGS`` drives parsing
and splitting (``ThinkSum-v0`` in the worked example uses ``<think>``/``<final>``)."""

from __future__ import annotations

import gymnasium as gym
import pytest

import langrl  # noqa: F401  (registers the envs)
from langrl.envs import ActionTags, CountdownEnv, GSM8KEnv, action_tags, parse_action, split_actions
from langrl.envs.base import DEFAULT_ACTION_TAGS, contract_problems

THINK = ActionTags(step="think", answer="final")


def test_defaults_are_langrls_tags():
    assert DEFAULT_ACTION_TAGS.all == ("<step>", "</step>", "<answer>", "</answer>")
    assert DEFAULT_ACTION_TAGS.action_stop == ("</step>", "</answer>")
    assert DEFAULT_ACTION_TAGS.completion_stop == ("</answer>",)
    assert CountdownEnv.ACTION_TAGS == GSM8KEnv.ACTION_TAGS == DEFAULT_ACTION_TAGS


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"step": ""}, "ActionTags.step"),
        ({"step": "st ep"}, "ActionTags.step"),
        ({"answer": "<answer>"}, "ActionTags.answer"),
        ({"answer": "a/b"}, "ActionTags.answer"),
        ({"answer": 3}, "ActionTags.answer"),
        ({"step": "x", "answer": "x"}, "must differ"),
    ],
)
def test_action_tags_validation(kwargs, field):
    with pytest.raises(ValueError, match=field) as err:
        ActionTags(**kwargs)
    assert "\n" not in str(err.value)


def test_parse_and_split_with_own_tags():
    assert parse_action(" <think>2 + 3</think>", THINK) == ("step", "2 + 3")
    assert parse_action("<final>5</final>", THINK) == ("answer", "5")
    # Another env's tags are just text here: malformed, and the default ones do not split.
    assert parse_action("<step>2 + 3</step>", THINK) == ("malformed", "<step>2 + 3</step>")
    assert parse_action("<think>a<final>b</think>", THINK)[0] == "malformed"
    text = "<think>2 + 3 = 5</think>\n<final>5</final> trailing <think>x</think>"
    assert split_actions(text, THINK) == ["<think>2 + 3 = 5</think>", "\n<final>5</final>"]
    assert split_actions(text) == [text]  # no </step> or </answer> in it
    with pytest.raises(TypeError, match="ActionTags"):
        split_actions(text, ("think", "final"))  # type: ignore[arg-type]


def test_env_with_own_tags_grades_them(sum_env_module):
    env = gym.make("ThinkSum-v0").unwrapped
    assert action_tags(env) == action_tags(gym.make("ThinkSum-v0")) == THINK
    _, info = env.reset(options={"index": 0})
    answer = str(sum(info["task"]["numbers"]))
    assert "<final></final>" in info["messages"][0]["content"]

    _, reward, terminated, _, info = env.step("<think>add them</think>")
    assert (reward, terminated, info["reason"]) == (0.0, False, "step")
    _, reward, terminated, _, info = env.step(f"\n<final>{answer}</final>")
    assert (reward, terminated, info["is_correct"]) == (1.0, True, True)

    env.reset(options={"index": 0})
    _, reward, terminated, _, info = env.step(f"<answer>{answer}</answer>")
    assert (reward, terminated, info["reason"]) == (-1.0, True, "malformed_action")
    assert "<think>...</think> or <final>...</final>" in info["detail"]


def test_bad_action_tags_fail_at_construction_and_in_the_contract(sum_env_module):
    class BadTags(sum_env_module.SumEnv):
        ACTION_TAGS = ("think", "final")  # type: ignore[assignment]

    with pytest.raises(TypeError, match="BadTags.ACTION_TAGS must be"):
        BadTags()

    class Plain:  # the contract's members, but a bad ACTION_TAGS
        ACTION_TAGS = "think"
        reset = step = num_tasks = get_state = set_state = staticmethod(lambda *a, **k: None)

    (problem,) = contract_problems(Plain())
    assert "Plain.ACTION_TAGS must be" in problem


@pytest.fixture
def sum_env_module():
    import sum_env  # the worked example beside this file (registers Sum-v0, ThinkSum-v0)

    return sum_env
