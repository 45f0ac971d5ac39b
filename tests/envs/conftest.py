"""Shared fixtures for the environment tests (``tests/envs``)."""

from __future__ import annotations

import gymnasium as gym
import pytest

import langrl  # noqa: F401  (registers the envs)

#: Every env langrl registers, found by looping over the registry (not a hand-kept list).
LANGRL_ENV_IDS = sorted(
    env_id
    for env_id, spec in gym.registry.items()
    if isinstance(spec.entry_point, str) and spec.entry_point.startswith("langrl.envs.")
)

COUNTDOWN_TASK = {"numbers": [3, 5, 7, 2], "target": 24}
GSM8K_TASK = {"question": "Tom has 3 boxes of 4 apples. How many apples?", "answer": "#### 12"}


@pytest.fixture(params=LANGRL_ENV_IDS)
def env_id(request) -> str:
    return request.param


@pytest.fixture
def countdown():
    env = gym.make("Countdown-v0").unwrapped
    yield env
    env.close()


@pytest.fixture
def gsm8k():
    env = gym.make("GSM8K-v0").unwrapped
    yield env
    env.close()
