"""What every agent shares: the agent protocol, the rollout record, prompt encoding.

An agent turns a batch of tasks into Trajectories by talking to the policy engine; it knows
nothing about the learner. Tasks are the ``options`` dicts that ``env.reset(options=...)``
accepts (``{"index": i}``, ``{"numbers": [...], "target": t}``, ``{"question": ...}``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from langrl.trajectory import Trajectory


@dataclass
class RolloutBatch:
    """What one ``Agent.collect`` call produced.

    Attributes:
        trajectories: Training records for the learner (may be empty, e.g. when every CISPO
            group had zero reward variance).
        metrics: Scalars to log, keyed by TensorBoard tag (``group/name``, see
            ``langrl.metrics``), e.g. ``"train/reward_mean"``, ``"search/tree_size"``.
        samples: A few human-readable transcripts for TensorBoard's text tab.
    """

    trajectories: list[Trajectory]
    metrics: dict[str, float] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)


class Agent(Protocol):
    """The protocol ``scripts/train_agent.py`` drives. One implementation per file in agents/."""

    name: str

    async def collect(self, tasks: Sequence[Mapping[str, Any]]) -> RolloutBatch:
        """Run the agent on ``tasks`` against the shared engine and return trajectories."""
        ...


def encode_prompt(tokenizer: Any, info: Mapping[str, Any], use_chat_template: bool) -> list[int]:
    """Token ids of an env's prompt: the chat messages through the model's chat template when
    asked for and available, else the compact plain prompt. Encoded once per episode; every
    later token id comes from the engine, so text is never re-tokenized."""
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        # return_dict=False: transformers 5 returns a BatchEncoding dict by default.
        ids = tokenizer.apply_chat_template(
            list(info["messages"]), add_generation_prompt=True, tokenize=True, return_dict=False
        )
        return [int(t) for t in ids]
    return list(tokenizer(info["prompt"], add_special_tokens=False)["input_ids"])
