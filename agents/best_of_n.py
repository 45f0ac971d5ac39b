"""Best-of-N rollouts: sample N answers per prompt, keep the best by training reward.

The baseline of the tree-search-distillation paper (N = 64): the kept completion becomes a
Trajectory with ``advantages=None``, so the learner trains it exactly as an MCTS trajectory
(``A_t = r - sg(V_old(s_t))`` from its value head, CISPO-weighted policy term, value MSE, KL).
Only what differs from MCTS lives here: how the trajectory is chosen (the max of N
independent samples instead of a tree search).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langrl.agents._sampling import (
    GroupSamplingAgent,
    SamplingAgentConfig,
    summarize,
    transcript,
)
from langrl.agents.base import RolloutBatch
from langrl.agents.rollout import GradedSample
from langrl.checks import check_ints
from langrl.trajectory import Trajectory


@dataclass
class BestOfNConfig(SamplingAgentConfig):
    """Rollout settings of the best-of-N agent: one trajectory per prompt of
    ``num_prompts``; the generation fields are ``SamplingAgentConfig``'s."""

    n: int = 16
    """N: samples per prompt, the best is kept (paper: 64)."""

    # --- selection ---
    min_reward: float | None = None
    """Drop a prompt whose best reward is below this (``None`` keeps every best, as the
    paper does)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ints(self, {"n": 1})


def pick_best(group: Sequence[GradedSample]) -> GradedSample | None:
    """The highest-reward sample with at least one token; ties go to the earliest (the
    engine's sample order is random, so this is an unbiased tie-break)."""
    best = None
    for g in group:
        if g.sample.token_ids and (best is None or g.reward > best.reward):
            best = g
    return best


class BestOfNAgent(GroupSamplingAgent):
    """Samples ``n`` answers per task and emits the best one (``advantages=None``).

    Args:
        config: ``BestOfNConfig``.
        env_id: Registered env id; the training (dense) reward ranks the samples.
        env_kwargs: ``gym.make`` keyword arguments.
        engine: The shared async ``PolicyEngine``.
    """

    name = "bon"
    config_class = BestOfNConfig

    async def collect(self, tasks: Sequence[Mapping[str, Any]]) -> RolloutBatch:
        cfg = self.config
        episodes, groups = await self.sample(tasks, cfg.n)

        trajectories: list[Trajectory] = []
        samples: list[str] = []
        best_rewards: list[float] = []
        for ep, group in zip(episodes, groups, strict=True):
            best = pick_best(group)
            if best is None:
                continue
            best_rewards.append(best.reward)
            if len(samples) < cfg.num_text_samples:
                samples.append(transcript(ep, best))
            if cfg.min_reward is not None and best.reward < cfg.min_reward:
                continue
            # advantages=None: the learner uses r - V_old(s_t), as for MCTS.
            trajectories.append(self.trajectory(ep, best, advantages=None))

        metrics = summarize(groups)
        metrics["gen/trajectories"] = float(len(trajectories))
        if best_rewards:
            metrics["train/best_reward_mean"] = sum(best_rewards) / len(best_rewards)
        return RolloutBatch(trajectories, metrics, samples)
