"""Constants shared by the tests in ``tests/envs`` (a uniquely named module rather than
``conftest``, which other test folders also define)."""

from __future__ import annotations

import gymnasium as gym

import langrl  # noqa: F401  (registers the envs)

#: Every env langrl registers, found by looping over the registry (not a hand-kept list).
LANGRL_ENV_IDS = sorted(
    env_id
    for env_id, spec in gym.registry.items()
    if isinstance(spec.entry_point, str) and spec.entry_point.startswith("langrl.envs.")
)

COUNTDOWN_TASK = {"numbers": [3, 5, 7, 2], "target": 24}
GSM8K_TASK = {"question": "Tom has 3 boxes of 4 apples. How many apples?", "answer": "#### 12"}
