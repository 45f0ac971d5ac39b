"""langrl.agents: the algorithms that turn tasks into Trajectories (installed from ``agents/``).

Built-in agents, imported lazily so that one agent's import error does not break the others:

* ``mcts``  -> ``langrl.agents.mcts.MCTSAgent``           (tree-search distillation)
* ``cispo`` -> ``langrl.agents.cispo.CISPOAgent``         (group-relative CISPO baseline)
* ``bon``   -> ``langrl.agents.best_of_n.BestOfNAgent``   (best-of-N baseline)

An agent of your own is named ``module:ClassName`` (``--agent my_agents:Reinforce``), the way
Gymnasium names an env of your own. Every agent class follows ``langrl.agents.base.Agent``:
it declares ``name``, ``config_class``, ``env_uses`` and ``learner_defaults(config)``, is
built as ``AgentClass(config, env_id, env_kwargs, engine)`` and implements ``collect``.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any

#: Built-in agent name -> ``module:ClassName``; the one place they are listed.
AGENT_SPECS: dict[str, str] = {
    "mcts": "langrl.agents.mcts:MCTSAgent",
    "cispo": "langrl.agents.cispo:CISPOAgent",
    "bon": "langrl.agents.best_of_n:BestOfNAgent",
}

#: What an agent class must declare (see ``langrl.agents.base.Agent``).
AGENT_CLASS_MEMBERS = ("name", "config_class", "env_uses", "learner_defaults", "collect")


class AgentSpecError(ValueError):
    """An agent name that names no usable agent class (one line)."""


def agent_class(spec: str) -> type:
    """The agent class that ``spec`` names: a built-in name (``mcts``, ``cispo``, ``bon``) or
    ``module:ClassName``. Imports its module; raises ``AgentSpecError`` (one line) when the
    module or class is missing or the class lacks a member of the agent contract."""
    if not isinstance(spec, str) or not spec:
        raise AgentSpecError(f"agent must be a name or module:ClassName, got {spec!r}")
    target = AGENT_SPECS.get(spec, spec)
    module_name, colon, class_name = target.partition(":")
    if not colon or not module_name or not class_name:
        raise AgentSpecError(
            f"unknown agent {spec!r}; valid agents: {', '.join(AGENT_SPECS)}, or "
            "module:ClassName for an agent of your own"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001  (ImportError or the module's own error)
        raise AgentSpecError(
            f"agent {spec!r} cannot be imported: {type(err).__name__}: {' '.join(str(err).split())}"
        ) from None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise AgentSpecError(f"agent {spec!r}: module {module_name!r} has no class {class_name!r}")
    missing = [m for m in AGENT_CLASS_MEMBERS if not hasattr(cls, m)]
    if missing:
        raise AgentSpecError(
            f"agent {spec!r}: {class_name} lacks {', '.join(missing)} of the agent contract "
            "(see langrl.agents.base.Agent)"
        )
    return cls


def agent_classes(spec: str) -> tuple[type, type]:
    """``(ConfigClass, AgentClass)`` of agent ``spec`` (imports its module)."""
    cls = agent_class(spec)
    return cls.config_class, cls


class _LazyRegistry(Mapping[str, tuple[type, type]]):
    """``AGENTS[name]`` imports the built-in agent's module on first access."""

    def __getitem__(self, name: str) -> tuple[type, type]:
        if name not in AGENT_SPECS:
            raise KeyError(name)
        return agent_classes(name)

    def __iter__(self) -> Iterator[str]:
        return iter(AGENT_SPECS)

    def __len__(self) -> int:
        return len(AGENT_SPECS)

    def __repr__(self) -> str:
        return f"AGENTS({', '.join(AGENT_SPECS)})"


#: ``{"mcts": (MCTSConfig, MCTSAgent), "cispo": (CISPOConfig, CISPOAgent), "bon": ...}``
AGENTS: Mapping[str, tuple[type, type]] = _LazyRegistry()


def make_agent(
    spec: str,
    config: Any,
    env_id: str,
    env_kwargs: Mapping[str, Any] | None,
    engine: Any,
) -> Any:
    """Build agent ``spec`` (a name or ``module:ClassName``); ``config`` is its config
    instance, a dict of its fields, or ``None`` for the defaults. ``engine`` is the shared
    async ``PolicyEngine``."""
    cls = agent_class(spec)
    if config is None:
        config = cls.config_class()
    elif isinstance(config, Mapping):
        config = cls.config_class(**config)
    return cls(config, env_id, env_kwargs, engine)


__all__ = [
    "AGENTS",
    "AGENT_CLASS_MEMBERS",
    "AGENT_SPECS",
    "AgentSpecError",
    "agent_class",
    "agent_classes",
    "make_agent",
]
