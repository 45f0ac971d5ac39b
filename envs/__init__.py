"""langrl.envs: reasoning tasks as Gymnasium environments (installed from ``envs/``).

``register_envs()`` (called by ``import langrl``) registers, in one place:

* ``Countdown-v0`` -> ``CountdownEnv`` (``max_episode_steps=8``)
* ``GSM8K-v0`` -> ``GSM8KEnv`` (``max_episode_steps=16``)

``gym.make("langrl:Countdown-v0")`` imports ``langrl`` (and so registers) on its own.
``make_env(env_id, env_kwargs)`` is the unwrapped env that agents and evaluation drive.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
from gymnasium.envs.registration import WrapperSpec

from langrl.envs.base import (
    PASSING_STEP_CHECKS,
    ActionTags,
    Grade,
    ReasoningEnv,
    ReasoningState,
    RewardConfig,
    SyncStepLimit,
    action_tags,
    parse_action,
    reward_for,
    split_actions,
    step_check_failed,
)
from langrl.envs.countdown import CountdownEnv, CountdownGeneratorConfig, CountdownTask
from langrl.envs.gsm8k import GSM8KEnv, GSM8KTask
from langrl.envs.text_space import UnicodeText

__all__ = [
    "ENV_SPECS",
    "PASSING_STEP_CHECKS",
    "ActionTags",
    "CountdownEnv",
    "CountdownGeneratorConfig",
    "CountdownTask",
    "GSM8KEnv",
    "GSM8KTask",
    "Grade",
    "ReasoningEnv",
    "ReasoningState",
    "RewardConfig",
    "SyncStepLimit",
    "UnicodeText",
    "action_tags",
    "make_env",
    "parse_action",
    "register_envs",
    "reward_for",
    "split_actions",
    "step_check_failed",
]

# Copies the TimeLimit's max_episode_steps into the env, so the truncating step is graded
# as "no answer" and tree search on env.unwrapped sees the same limit (see SyncStepLimit).
_SYNC_STEP_LIMIT = WrapperSpec(
    name="SyncStepLimit", entry_point="langrl.envs.base:SyncStepLimit", kwargs={}
)

#: The registry entries, declaratively: step limits live here, not in the envs.
#: Countdown with 4 numbers needs 3 steps and an answer; 8 leaves room for dead ends.
#: GSM8K reference solutions have 2-8 lines; 16 leaves room for longer reasoning.
ENV_SPECS: tuple[dict, ...] = (
    {
        "id": "Countdown-v0",
        "entry_point": "langrl.envs.countdown:CountdownEnv",
        "max_episode_steps": 8,
        "additional_wrappers": (_SYNC_STEP_LIMIT,),
    },
    {
        "id": "GSM8K-v0",
        "entry_point": "langrl.envs.gsm8k:GSM8KEnv",
        "max_episode_steps": 16,
        "additional_wrappers": (_SYNC_STEP_LIMIT,),
    },
)


def register_envs() -> None:
    """Register every langrl env with Gymnasium; safe to call any number of times."""
    for spec in ENV_SPECS:
        if spec["id"] not in gym.registry:
            gym.register(**spec)


def make_env(env_id: str, env_kwargs: Mapping[str, Any] | None = None) -> Any:
    """``gym.make(env_id, **env_kwargs).unwrapped``: the env itself, with ``get_state`` /
    ``set_state`` for snapshots; the registry's step limit is copied into it by its
    ``SyncStepLimit`` wrapper at construction."""
    return gym.make(env_id, **dict(env_kwargs or {})).unwrapped
