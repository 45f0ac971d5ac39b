"""What every agent shares: the agent contract (``Agent``) and the rollout record.

An agent turns a batch of tasks into Trajectories by talking to the policy engine; it knows
nothing about the learner. Tasks are the ``options`` dicts that ``env.reset(options=...)``
accepts (``{"index": i}``, ``{"numbers": [...], "target": t}``, ``{"question": ...}``).
Prompts are encoded by the engine (``PolicyEngine.encode_prompt``), which owns the chat
template flag. The contract in prose: docs/design.md, "Contracts".
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from langrl.engine.base import PolicyEngine
from langrl.trajectory import Trajectory

#: Key of the per-task sampling seed in a task dict, for agents that declare
#: ``task_seeds = True`` (see ``Agent``). Not an env option: ``split_task_seed`` removes it.
TASK_SEED_KEY = "seed"


def derive_seed(*parts: int) -> int:
    """A sampling seed in ``[0, 2**31)`` determined by ``parts`` alone (any ints), the same
    on every machine and Python (a BLAKE2 hash, not Python's salted ``hash``). Used for
    per-task seeds (run seed, epoch, position) and to mix an agent's own seed into them."""
    digest = hashlib.blake2b(",".join(str(int(p)) for p in parts).encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "little") >> 33


def split_task_seed(task: Mapping[str, Any]) -> tuple[dict[str, Any], int | None]:
    """``(env reset options, seed)`` of a task: the task without its ``TASK_SEED_KEY``, and
    that seed (``None`` when the task carries none)."""
    options = dict(task)
    seed = options.pop(TASK_SEED_KEY, None)
    return options, None if seed is None else int(seed)


def request_seed_base(agent_seed: int | None, task_seed: int | None) -> int | None:
    """The seed an agent derives a task's engine requests from: the task's own seed (the
    training run's, from the run seed and the task's place in the data order), mixed with
    the agent config's ``seed`` when both are set; the agent's seed alone is not enough
    (``None``: the caller falls back to its own scheme), nor is nothing."""
    if task_seed is None:
        return None
    return task_seed if agent_seed is None else derive_seed(agent_seed, task_seed)


@dataclass
class RolloutBatch:
    """What one ``Agent.collect`` call produced.

    Attributes:
        trajectories: Training records for the learner (may be empty, e.g. when every CISPO
            group had zero reward variance).
        metrics: Scalars to log, keyed by TensorBoard tag (``group/name``, see
            ``langrl.metrics``), e.g. ``"train/reward_mean"``, ``"search/tree_size"``.
        samples: A few human-readable transcripts for TensorBoard's text tab.
        pages: Search trees (or other structured pages) the run saves under
            ``<run_dir>/trees/`` as JSON + HTML (``langrl.agents.tree_page``): page name
            (a file stem, e.g. ``"search_000001"``) -> JSON-able tree dict
            (``tree_to_dict``). Most agents leave it empty.
        value_trajectories: Records that train the value head alone
            (``Trajectory.value_only``, e.g. every end of a search tree). They do not count
            as the rollout's yield; the buffer hands each out with the next batch, beyond
            ``batch_size``. Most agents leave it empty.
    """

    trajectories: list[Trajectory]
    metrics: dict[str, float] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)
    pages: dict[str, dict[str, Any]] = field(default_factory=dict)
    value_trajectories: list[Trajectory] = field(default_factory=list)


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

    Optional class attribute ``task_seeds: bool`` (default False): the agent reads a
    per-task sampling seed from each task dict, under ``TASK_SEED_KEY`` (``"seed"``), and
    derives every engine request of that task from it (``SamplingConfig.seed``), so that
    its samples depend only on the weights and the task, not on what else the engine is
    batching or how many rollouts came before. The training run then adds the key to the
    tasks it hands out (``TaskSampler``: a hash of the run seed, the epoch and the position
    in the data order, so a resumed run hands out the same seeds); an agent that does not
    declare it gets plain tasks. The seed is not an env option (langrl's envs refuse
    unknown reset options): ``split_task_seed`` separates the two before ``env.reset``.
    The built-in agents declare it.

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
