"""CISPO rollouts: B prompts x G samples, group-relative advantages.

The baseline of the tree-search-distillation paper: for each prompt sample a group of G
complete answers, grade them with the env, and give every token of sample i the advantage

    A_i = r_i - mean(r_group)                  (std_scaling=False, the default)
    A_i = (r_i - mean(r_group)) / (std + eps)  (std_scaling=True, GRPO-style)

Groups whose rewards are all equal carry no signal (every A_i = 0) and are dropped; their
count is logged as ``gen/zero_variance_groups``. The CISPO loss itself (clipped importance
weight ``sg(min(ratio, eps_high))`` times the log-prob, plus KL) lives in the learner;
``eps_high`` and the KL coefficient are ``LearnerConfig`` fields.

References: MiniMax-M1 (CISPO, arXiv:2506.13585); DeepSeekMath (GRPO group baseline,
arXiv:2402.03300); Dr. GRPO (no std scaling, arXiv:2503.20783). Paper setting: 128 x 16.
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
from langrl.checks import check_ints
from langrl.trajectory import Trajectory


@dataclass
class CISPOConfig(SamplingAgentConfig):
    """Rollout settings of the CISPO agent (loss settings are in ``LearnerConfig``).
    ``num_prompts`` is B, the prompts per ``collect`` (paper: 128); the generation fields
    are ``SamplingAgentConfig``'s."""

    group_size: int = 8
    """G: samples per prompt; advantages are relative to the group (paper: 16). >= 2."""

    # --- advantages ---
    std_scaling: bool = False
    """Divide centred rewards by the group std (GRPO). Off by default (Dr. GRPO: scaling
    over-weights nearly-solved and nearly-failed prompts)."""
    std_eps: float = 1e-4
    """Added to the std when ``std_scaling`` is on."""
    min_reward_std: float = 1e-6
    """Groups whose reward std is at or below this count as zero-variance."""
    filter_zero_variance: bool = True
    """Drop zero-variance groups (default). False keeps them with zero advantages: no
    policy gradient, but they still train the value head and count in the learner's token
    normaliser (useful when a weak policy fails every sample)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ints(self, {"group_size": 2})
        if not self.std_eps > 0:
            raise ValueError(f"CISPOConfig.std_eps must be > 0, got {self.std_eps}")
        if not self.min_reward_std >= 0:
            raise ValueError(f"CISPOConfig.min_reward_std must be >= 0, got {self.min_reward_std}")


def group_advantages(
    rewards: Sequence[float], std_scaling: bool = False, std_eps: float = 1e-4
) -> tuple[list[float], float]:
    """Group-relative advantages ``r_i - mean(r)`` (optionally ``/ (std + eps)``) and the
    group's (population) reward std."""
    n = len(rewards)
    mean = sum(rewards) / n
    std = (sum((r - mean) ** 2 for r in rewards) / n) ** 0.5
    centred = [r - mean for r in rewards]
    if std_scaling:
        centred = [a / (std + std_eps) for a in centred]
    return centred, std


class CISPOAgent(GroupSamplingAgent):
    """Samples ``group_size`` answers per task and emits those of informative groups with
    per-token group-relative advantages.

    Args:
        config: ``CISPOConfig``.
        env_id: Registered env id (``"Countdown-v0"``); the training (dense) reward is used.
        env_kwargs: ``gym.make`` keyword arguments (``split``, ``reward``, ...).
        engine: The shared async ``PolicyEngine``.
    """

    name = "cispo"
    config_class = CISPOConfig

    @classmethod
    def learner_defaults(cls, config: CISPOConfig) -> dict[str, Any]:
        """``c_value = 0``: CISPO's trajectories carry their own group advantages, so the
        learner never uses V; training the head would only send its gradient into the trunk."""
        return {"c_value": 0.0}

    async def collect(self, tasks: Sequence[Mapping[str, Any]]) -> RolloutBatch:
        cfg = self.config
        episodes, groups = await self.sample(tasks, cfg.group_size)

        trajectories: list[Trajectory] = []
        samples: list[str] = []
        zero_variance = 0
        for ep, group in zip(episodes, groups, strict=True):
            if not group:
                continue  # the prompt did not fit the engine's context
            advantages, std = group_advantages(
                [g.reward for g in group], cfg.std_scaling, cfg.std_eps
            )
            if len(samples) < cfg.num_text_samples and group:
                samples.append(transcript(ep, max(group, key=lambda g: g.reward)))
            if std <= cfg.min_reward_std:
                zero_variance += 1  # every A_i is 0: no policy-gradient signal
                if cfg.filter_zero_variance:
                    continue
                advantages = [0.0] * len(group)
            for g, adv in zip(group, advantages, strict=True):
                if g.sample.token_ids:  # nothing sampled, nothing to train on
                    n_tokens = len(g.sample.token_ids)
                    trajectories.append(self.trajectory(ep, g, advantages=[adv] * n_tokens))

        metrics = summarize(groups)
        metrics["gen/zero_variance_groups"] = float(zero_variance)
        metrics["gen/zero_variance_frac"] = zero_variance / max(len(groups), 1)
        metrics["gen/trajectories"] = float(len(trajectories))
        if trajectories:
            metrics["train/advantage_abs_mean"] = sum(
                abs(t.advantages[0]) for t in trajectories
            ) / len(trajectories)
        return RolloutBatch(trajectories, metrics, samples)
