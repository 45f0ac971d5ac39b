"""The one record that flows from every agent to the learner.

Agents (MCTS, CISPO, best-of-N) all emit ``Trajectory`` objects; the learner never
knows which agent produced one. Token ids travel with the text: the learner trains on
exactly the ids the engine sampled, with the engine's logprobs as the behaviour policy,
and never re-tokenizes sampled text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Trajectory:
    """One sampled completion of one prompt, ready for a policy-gradient update.

    Attributes:
        prompt_ids: Token ids of the context the completion was sampled from (not trained on).
        completion_ids: Token ids the engine sampled, in order (trained on).
        behaviour_logprobs: Per completion token, its logprob under the *sampling*
            distribution (at ``temperature``) of the policy version that sampled it.
            Same length as ``completion_ids``.
        reward: Scalar episode reward (the environment's training reward).
        advantages: Optional per-token advantages (same length as ``completion_ids``).
            ``None`` means the learner computes ``A_t = reward - sg(V_old(s_t))`` from its
            value head (the MCTS-distill rule); group-relative agents (CISPO) supply them.
        temperature: The temperature the engine sampled the completion at (> 0). The
            behaviour logprobs are at this temperature, so the learner divides this
            trajectory's logits by it before comparing the two. 1.0 = the raw policy.
        policy_version: Engine weight version that sampled the completion; the learner
            reports ``current_version - policy_version`` as staleness.
        agent: Name of the agent that produced it (for logging only).
        value_only: Train only the value head on it (``V(s_t)`` towards ``reward`` at every
            completion token), not the policy: no policy loss, no KL, no entropy, and the LM
            trunk runs without gradient for it. For outcomes an agent saw but does not want
            imitated, e.g. every end of a search tree (``MCTSConfig.value_ends``). The buffer
            does not count such trajectories towards ``batch_size``: each rides along with
            the next batch taken after it arrives.
        info: Free-form diagnostics (task, text, search statistics); never read by the learner.
    """

    prompt_ids: list[int]
    completion_ids: list[int]
    behaviour_logprobs: list[float]
    reward: float
    advantages: list[float] | None = None
    temperature: float = 1.0
    policy_version: int = 0
    agent: str = ""
    value_only: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.completion_ids)
        if n == 0:
            raise ValueError("Trajectory.completion_ids is empty: there is nothing to train on")
        if len(self.behaviour_logprobs) != n:
            raise ValueError(
                f"Trajectory.behaviour_logprobs has {len(self.behaviour_logprobs)} entries, "
                f"completion_ids has {n}: they must match one to one"
            )
        if self.advantages is not None and len(self.advantages) != n:
            raise ValueError(
                f"Trajectory.advantages has {len(self.advantages)} entries, completion_ids has {n}"
            )
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(
                f"Trajectory.temperature must be a finite number > 0, got {self.temperature!r}"
            )

    @property
    def num_tokens(self) -> int:
        """Prompt plus completion length."""
        return len(self.prompt_ids) + len(self.completion_ids)
