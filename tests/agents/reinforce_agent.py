"""An agent of your own, written only against langrl's public contracts: plain REINFORCE
with a group-mean baseline.

For each task it samples ``group_size`` completions from the shared engine, grades them with
the env (``sample_and_grade``: the graders every agent shares), and hands the learner one
``Trajectory`` per completion whose advantage is ``reward - mean(group rewards)`` on every
token. Nothing in langrl names this class; it is trained by its Gymnasium-style name::

    python scripts/train_agent.py --agent reinforce_agent:Reinforce --reinforce.group_size 4

(with ``tests/agents`` on ``PYTHONPATH``). The class declares what the training run needs
(``langrl.agents.base.Agent``): its ``name`` (the config section), ``config_class``,
``env_uses`` and ``learner_defaults``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langrl.agents.base import RolloutBatch
from langrl.agents.rollout import sample_and_grade
from langrl.engine.base import PolicyEngine, SamplingConfig
from langrl.envs import make_env
from langrl.trajectory import Trajectory


@dataclass
class ReinforceConfig:
    """Settings of the REINFORCE example agent."""

    group_size: int = 4
    """Completions per task; their mean reward is each one's baseline."""
    max_tokens: int = 96
    """Most tokens per completion."""
    temperature: float = 1.0
    """Sampling temperature (the learner scores at the same one: it travels on each
    Trajectory)."""

    def __post_init__(self) -> None:
        if self.group_size < 2:
            raise ValueError(f"ReinforceConfig.group_size must be >= 2, got {self.group_size}")
        if not self.temperature > 0:
            raise ValueError(f"ReinforceConfig.temperature must be > 0, got {self.temperature}")


class Reinforce:
    """REINFORCE with a group-mean baseline (no value head, no search)."""

    name = "reinforce"
    config_class = ReinforceConfig
    env_uses = ("rollouts",)

    @classmethod
    def learner_defaults(cls, config: ReinforceConfig) -> dict[str, Any]:
        # The advantages come with the trajectories: the value head would be unused.
        return {"c_value": 0.0}

    def __init__(
        self,
        config: ReinforceConfig,
        env_id: str,
        env_kwargs: Mapping[str, Any] | None,
        engine: PolicyEngine,
    ) -> None:
        self.config, self.engine = config, engine
        self.env = make_env(env_id, env_kwargs)

    async def collect(self, tasks: Sequence[Mapping[str, Any]]) -> RolloutBatch:
        cfg = self.config
        sampling = SamplingConfig(
            n=cfg.group_size, max_tokens=cfg.max_tokens, temperature=cfg.temperature
        )
        starts = []
        for task in tasks:
            _, info = self.env.reset(options=dict(task))
            starts.append((self.env.get_state(), self.engine.encode_prompt(info)))
        groups = await asyncio.gather(
            *(
                sample_and_grade(self.engine, self.env, state, ids, sampling)
                for state, ids in starts
            )
        )
        trajectories, rewards = [], []
        for (_, prompt_ids), group in zip(starts, groups, strict=True):
            baseline = sum(g.reward for g in group) / len(group)
            for graded in group:
                sample = graded.sample
                if not sample.token_ids:
                    continue
                rewards.append(graded.reward)
                trajectories.append(
                    Trajectory(
                        prompt_ids=prompt_ids,
                        completion_ids=sample.token_ids,
                        behaviour_logprobs=sample.logprobs,
                        reward=graded.reward,
                        advantages=[graded.reward - baseline] * len(sample.token_ids),
                        policy_version=graded.policy_version,
                        temperature=cfg.temperature,
                        agent=self.name,
                    )
                )
        mean = sum(rewards) / len(rewards) if rewards else 0.0
        return RolloutBatch(trajectories, metrics={"train/reward_mean": mean})
