"""The shared torch learner: one optimiser step per batch of ``Trajectory``, for every agent.

Public API: ``Learner`` (``step``, ``export_weights``, ``save_checkpoint``,
``load_checkpoint``), ``LearnerConfig``, ``latest_checkpoint``, ``METRIC_TAGS`` and the pure
loss functions in ``langrl.learner.losses``.
"""

from langrl.learner.config import LearnerConfig
from langrl.learner.learner import METRIC_TAGS, Learner, latest_checkpoint
from langrl.learner.losses import (
    POLICY_LOSSES,
    cispo_policy_loss,
    entropy_from_logits,
    k3_kl,
    logprobs_from_logits,
    masked_mean,
    ppo_clip_policy_loss,
    value_loss,
)

__all__ = [
    "METRIC_TAGS",
    "POLICY_LOSSES",
    "Learner",
    "LearnerConfig",
    "cispo_policy_loss",
    "entropy_from_logits",
    "k3_kl",
    "latest_checkpoint",
    "logprobs_from_logits",
    "masked_mean",
    "ppo_clip_policy_loss",
    "value_loss",
]
