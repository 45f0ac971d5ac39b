"""Contract tests over every registered langrl env: registration, check_env, seeding,
step limits, vector envs."""

from __future__ import annotations

import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
from envtest_helpers import COUNTDOWN_TASK, LANGRL_ENV_IDS
from gymnasium.utils.env_checker import check_env

from langrl.envs import ENV_SPECS, register_envs


def test_registry_holds_exactly_the_declared_envs():
    assert LANGRL_ENV_IDS == sorted(spec["id"] for spec in ENV_SPECS)
    assert set(LANGRL_ENV_IDS) == {"Countdown-v0", "GSM8K-v0"}
    for env_id in LANGRL_ENV_IDS:
        assert gym.spec(env_id).max_episode_steps is not None


def test_register_envs_is_idempotent():
    before = dict(gym.registry)
    register_envs()
    register_envs()
    assert dict(gym.registry) == before


def test_make_with_module_prefix_registers_without_import():
    code = (
        "import gymnasium as gym\n"
        "env = gym.make('langrl:Countdown-v0')\n"
        "obs, info = env.reset(seed=0)\n"
        "assert obs.startswith('Numbers: '), obs\n"
        "print(type(env.unwrapped).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "CountdownEnv"


@pytest.mark.parametrize("unwrapped", [False, True], ids=["registered", "unwrapped"])
def test_check_env(env_id, unwrapped):
    env = gym.make(env_id)
    target = env.unwrapped if unwrapped else env
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(target, skip_render_check=False)
    unexpected = [
        str(w.message)
        for w in caught
        if "is different from the unwrapped version" not in str(w.message)
    ]
    assert unexpected == []


def _rollout(env, seed, actions):
    obs, info = env.reset(seed=seed)
    trace = [(obs, info["task"], info["index"])]
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        trace.append((obs, reward, terminated, truncated, info))
        if terminated or truncated:
            break
    return trace


def test_same_seed_same_rollout(env_id):
    actions = ["<step>1 + 2 = 3</step>", "\n<step>3 * 2 = 6</step>", "<answer>6</answer>"]
    a = _rollout(gym.make(env_id), 123, actions)
    b = _rollout(gym.make(env_id), 123, actions)
    assert a == b
    # and the seed matters: 8 seeds do not all draw the same task
    tasks = {str(_rollout(gym.make(env_id), s, [])[0][1]) for s in range(8)}
    assert len(tasks) > 1


def test_sampled_actions_are_deterministic_with_seeded_space(env_id):
    def run():
        env = gym.make(env_id)
        env.reset(seed=5)
        env.action_space.seed(5)
        return env.step(env.action_space.sample())

    assert run() == run()


def test_step_limit_comes_from_registry_and_truncates_as_no_answer(env_id):
    limit = gym.spec(env_id).max_episode_steps
    env = gym.make(env_id)
    assert env.spec.max_episode_steps == limit
    assert env.unwrapped.max_steps == limit
    env.reset(seed=0)
    for i in range(limit):
        obs, reward, terminated, truncated, info = env.step("<step>thinking</step>")
        if i < limit - 1:
            assert (reward, terminated, truncated) == (0.0, False, False)
    assert truncated and not terminated
    assert info["reason"] == "step_limit"
    assert reward == env.unwrapped.reward_config.no_answer_reward == -1.0
    assert env.unwrapped.get_state().truncated


def test_max_episode_steps_override_is_honoured():
    env = gym.make("Countdown-v0", max_episode_steps=2)
    env.reset(options=COUNTDOWN_TASK)
    assert env.step("<step>3 * 7 = 21</step>")[1:4] == (0.0, False, False)
    _, reward, terminated, truncated, info = env.step("<step>21 + 5 = 26</step>")
    assert (reward, terminated, truncated, info["reason"]) == (-1.0, False, True, "step_limit")
    # an answer on the last allowed step is graded as an answer
    env.reset(options=COUNTDOWN_TASK)
    env.step("<step>3 * 7 = 21</step>")
    _, reward, terminated, _, info = env.step("<answer>3 * 7 + 5 - 2</answer>")
    assert (reward, terminated, info["reason"]) == (1.0, True, "correct")


@pytest.mark.parametrize("vector_cls", [gym.vector.SyncVectorEnv, gym.vector.AsyncVectorEnv])
def test_vector_envs(env_id, vector_cls):
    n = 3
    envs = vector_cls([lambda: gym.make(env_id) for _ in range(n)])
    try:
        assert envs.single_observation_space == gym.make(env_id).observation_space
        obs, infos = envs.reset(seed=[1, 2, 3])
        assert isinstance(obs, tuple) and len(obs) == n
        assert all(isinstance(o, str) and o == p for o, p in zip(obs, infos["prompt"], strict=True))
        # Unicode must survive the (shared-memory) transport exactly
        step = "<step>Ünïcødé ٣ × ３ = 😀 \u200b</step>"
        obs2, rewards, terminated, truncated, infos = envs.step((step,) * n)
        assert obs2 == tuple(o + step for o in obs)
        np.testing.assert_array_equal(rewards, np.zeros(n))
        assert not terminated.any() and not truncated.any()
        obs3, rewards, terminated, truncated, infos = envs.step(
            ("<answer>oops", "", "<answer>1</answer>")
        )
        assert terminated.all()
        assert list(infos["reason"][:2]) == ["malformed_action", "no_answer"]
        np.testing.assert_array_equal(rewards[:2], [-1.0, -1.0])
        assert obs3[0] == obs2[0] + "<answer>oops"
    finally:
        envs.close()


def test_make_vec(env_id):
    envs = gym.make_vec(env_id, num_envs=2, vectorization_mode="sync")
    obs, _ = envs.reset(seed=0)
    assert len(obs) == 2 and all(isinstance(o, str) for o in obs)
    envs.close()
