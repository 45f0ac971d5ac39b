"""Tree-search branching: get_state / set_state / clone restore an episode exactly."""

from __future__ import annotations

import dataclasses
import pickle

import gymnasium as gym
import pytest
from envtest_helpers import COUNTDOWN_TASK

from langrl.envs import CountdownEnv, GSM8KEnv, ReasoningState

BRANCH_ACTIONS = {
    "Countdown-v0": (
        ["<step>7 * 3 = 21</step>"],
        [
            "<step>21 + 5 = 26</step>",
            "\n<step>26 - 2 = 24</step>",
            "<answer>7 * 3 + 5 - 2</answer>",
        ],
    ),
    "GSM8K-v0": (
        ["<step>First, 2 * 3 = 6.</step>"],
        ["<step>Then 6 + 1 = 8.</step>", "<answer>7</answer>"],
    ),
}


def _play(env, actions):
    return [env.step(a) for a in actions]


def test_restored_env_reproduces_the_original(env_id):
    prefix, suffix = BRANCH_ACTIONS[env_id]
    env = gym.make(env_id).unwrapped
    env.reset(seed=3)
    _play(env, prefix)
    snapshot = env.get_state()
    original = _play(env, suffix)
    final = env.get_state()

    # same env, rewound
    env.set_state(snapshot)
    assert env.get_state() == snapshot
    assert _play(env, suffix) == original
    assert env.get_state() == final

    # a fresh env (never reset) adopts the snapshot, transcript included
    other = gym.make(env_id).unwrapped
    other.set_state(snapshot)
    assert other.get_state().transcript == snapshot.prompt + "".join(prefix)
    assert _play(other, suffix) == original

    # clone: independent copy of config + state
    env.set_state(snapshot)
    twin = env.clone()
    assert _play(twin, suffix) == original
    assert env.get_state() == snapshot  # the clone moved, not the original
    assert _play(env, suffix) == original


def test_snapshot_is_immutable_and_unaffected_by_later_steps(countdown):
    countdown.reset(options=COUNTDOWN_TASK)
    s0 = countdown.get_state()
    countdown.step("<step>7 * 3 = 21</step>")
    s1 = countdown.get_state()
    assert (s0.num_steps, s0.actions, s0.progress) == (0, (), (3, 5, 7, 2))
    assert (s1.num_steps, s1.actions, s1.progress) == (1, ("<step>7 * 3 = 21</step>",), (5, 2, 21))
    assert isinstance(s1, ReasoningState) and dataclasses.is_dataclass(s1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s1.num_steps = 5  # type: ignore[misc]
    assert hash(s1.task) == hash(s0.task)  # frozen task, shared between snapshots
    assert s1.task is s0.task
    assert pickle.loads(pickle.dumps(s1)) == s1  # snapshots can cross processes


def test_done_flags_are_part_of_the_state(countdown):
    countdown.reset(options=COUNTDOWN_TASK)
    before = countdown.get_state()
    countdown.step("<answer>7 * 3 + 5 - 2</answer>")
    assert countdown.get_state().terminated and countdown.get_state().done
    with pytest.raises(RuntimeError, match="reset"):
        countdown.step("<answer>1</answer>")
    countdown.set_state(before)  # branching back out of a finished episode
    assert countdown.step("<answer>7 * 3 + 5 - 2</answer>")[1] == 1.0


def test_step_limit_counts_restored_steps():
    env = CountdownEnv(max_steps=2)
    env.reset(options=COUNTDOWN_TASK)
    env.step("<step>7 * 3 = 21</step>")
    snapshot = env.get_state()
    fresh = CountdownEnv(max_steps=2)
    fresh.set_state(snapshot)
    *_, truncated, info = fresh.step("<step>21 + 5 = 26</step>")
    assert truncated and info["reason"] == "step_limit"


def test_set_state_rejects_foreign_states(countdown):
    gsm = GSM8KEnv()
    gsm.reset(options={"question": "q", "answer": "1"})
    with pytest.raises(TypeError, match="CountdownTask"):
        countdown.set_state(gsm.get_state())
    with pytest.raises(TypeError, match="ReasoningState"):
        countdown.set_state({"transcript": "x"})  # type: ignore[arg-type]
