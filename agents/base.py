"""What every agent shares: the agent contract (``Agent``) and the rollout record.

An agent turns a batch of tasks into Trajectories by talking to the policy engine; it knows
nothing about the learner. Tasks are the ``options`` dicts that ``env.reset(options=...)``
accepts (``{"index": i}``, ``{"numbers": [...], "target": t}``, ``{"question": ...}``).
Prompts are encoded by the engine (``PolicyEngine.encode_prompt``), which owns the chat
template flag. The contract in prose: docs/design.md, "Contracts".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from langrl.engine.base import PolicyEngine
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
    """The contract an agent class meets; the training app reads nothing else of it (no
    branches on agent names). The built-in agents (``mcts``, ``cispo``, ``bon``) and a user's
    ``--agent my_module:MyAgent`` are driven the same way.

    Class attributes:
        name: Short name, recorded on every Trajectory (``Trajectory.agent``) and in logs.
        config_class: The agent's config dataclass; the app builds it from the config's
            section of the same ``name`` (``--cispo.group_size 16``), and its
            ``__post_init__`` refuses bad values with ``ValueError``.
        env_uses: What the agent needs of an env, as keys of
            ``langrl.envs.base.CONTRACT_MEMBERS``: ``("rollouts",)`` to sample and grade whole
            answers, ``("rollouts", "search")`` to branch from snapshots as well
            (``get_state``/``set_state``/``task_info``). The app checks the env with
            ``contract_problems(env, env_uses)`` before any engine starts.

    Class method ``learner_defaults(config) -> dict``: ``LearnerConfig`` fields that follow
    from the agent and its config (CISPO supplies its own advantages and trains no value
    head: ``{"c_value": 0.0}``); the run's explicit learner settings override them.

    An agent is built as ``AgentClass(config, env_id, env_kwargs, engine)``: its config
    instance, a registered env id, ``gym.make`` keyword arguments (``langrl.envs.make_env``),
    and the shared async ``PolicyEngine``. ``await agent.collect(tasks)`` runs on the
    engine's event loop and returns a ``RolloutBatch``.
    """

    name: ClassVar[str]
    config_class: ClassVar[type]
    env_uses: ClassVar[tuple[str, ...]]

    def __init__(
        self, config: Any, env_id: str, env_kwargs: Mapping[str, Any] | None, engine: PolicyEngine
    ) -> None: ...

    @classmethod
    def learner_defaults(cls, config: Any) -> dict[str, Any]:
        """``LearnerConfig`` fields this agent sets for the run (``{}`` for none)."""
        ...

    async def collect(self, tasks: Sequence[Mapping[str, Any]]) -> RolloutBatch:
        """Run the agent on ``tasks`` against the shared engine and return trajectories."""
        ...
