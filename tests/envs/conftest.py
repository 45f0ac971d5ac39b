"""Fixtures for the environment tests (``tests/envs``)."""

from __future__ import annotations

import gymnasium as gym
import pytest
from envtest_helpers import LANGRL_ENV_IDS


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
