"""The shared torch learner: one optimiser step per batch of ``Trajectory``, for every agent.

Public API: ``Learner`` (``step``, ``export_weights``, ``save_checkpoint``,
``load_checkpoint``), ``LearnerConfig``, ``latest_checkpoint``, ``verify_checkpoint``,
``prune_checkpoints``, ``CheckpointError``, ``METRIC_TAGS`` and the pure
loss functions in ``langrl.learner.losses``.

``LearnerConfig`` is pure (no torch): importing it, or this package for it, loads no torch.
Every other name is imported from its module (torch and transformers with it) on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from langrl.learner.config import LearnerConfig

if TYPE_CHECKING:
    from langrl.learner.learner import (
        METRIC_TAGS,
        CheckpointError,
        Learner,
        latest_checkpoint,
        prune_checkpoints,
        verify_checkpoint,
    )
    from langrl.learner.losses import (
        POLICY_LOSSES,
        cispo_policy_loss,
        entropy_from_logits,
        k3_kl,
        logprobs_from_logits,
        masked_mean,
        value_loss,
    )

#: Lazily imported names -> the module that defines (or re-exports) them.
_LAZY = {
    "METRIC_TAGS": "langrl.learner.learner",
    "Learner": "langrl.learner.learner",
    "latest_checkpoint": "langrl.learner.learner",
    "CheckpointError": "langrl.learner.learner",
    "prune_checkpoints": "langrl.learner.learner",
    "verify_checkpoint": "langrl.learner.learner",
    "POLICY_LOSSES": "langrl.learner.losses",
    "cispo_policy_loss": "langrl.learner.losses",
    "entropy_from_logits": "langrl.learner.losses",
    "k3_kl": "langrl.learner.losses",
    "logprobs_from_logits": "langrl.learner.losses",
    "masked_mean": "langrl.learner.losses",
    "value_loss": "langrl.learner.losses",
}

__all__ = [
    "METRIC_TAGS",
    "POLICY_LOSSES",
    "CheckpointError",
    "Learner",
    "LearnerConfig",
    "cispo_policy_loss",
    "entropy_from_logits",
    "k3_kl",
    "latest_checkpoint",
    "logprobs_from_logits",
    "masked_mean",
    "prune_checkpoints",
    "value_loss",
    "verify_checkpoint",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
