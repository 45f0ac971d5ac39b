"""langrl.agents: the algorithms that turn tasks into Trajectories (installed from ``agents/``).

``AGENTS`` maps each agent name to ``(ConfigClass, AgentClass)``; ``make_agent`` builds one.
Entries are imported lazily, so that one agent's import error (or a module still being
written) does not break the others:

* ``mcts``  -> ``langrl.agents.mcts``       (tree-search distillation)
* ``cispo`` -> ``langrl.agents.cispo``      (group-relative CISPO baseline)
* ``bon``   -> ``langrl.agents.best_of_n``  (best-of-N baseline)

Every agent is built as ``AgentClass(config, env_id, env_kwargs, engine)`` and implements
``langrl.agents.base.Agent``.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any

#: name -> (module, config class name, agent class name); the one place agents are listed.
AGENT_SPECS: dict[str, tuple[str, str, str]] = {
    "mcts": ("langrl.agents.mcts", "MCTSConfig", "MCTSAgent"),
    "cispo": ("langrl.agents.cispo", "CISPOConfig", "CISPOAgent"),
    "bon": ("langrl.agents.best_of_n", "BestOfNConfig", "BestOfNAgent"),
}


def _check_name(name: str) -> None:
    if name not in AGENT_SPECS:
        raise ValueError(f"unknown agent {name!r}; valid agents: {', '.join(AGENT_SPECS)}")


def agent_classes(name: str) -> tuple[type, type]:
    """``(ConfigClass, AgentClass)`` of agent ``name`` (imports its module)."""
    _check_name(name)
    module_name, config_name, agent_name = AGENT_SPECS[name]
    module = importlib.import_module(module_name)
    return getattr(module, config_name), getattr(module, agent_name)


class _LazyRegistry(Mapping[str, tuple[type, type]]):
    """``AGENTS[name]`` imports the agent's module on first access."""

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
    name: str,
    config: Any,
    env_id: str,
    env_kwargs: Mapping[str, Any] | None,
    engine: Any,
) -> Any:
    """Build agent ``name``; ``config`` is its config instance, or a dict of its fields, or
    ``None`` for the defaults. ``engine`` is the shared async ``PolicyEngine``."""
    config_cls, agent_cls = agent_classes(name)
    if config is None:
        config = config_cls()
    elif isinstance(config, Mapping):
        config = config_cls(**config)
    return agent_cls(config, env_id, env_kwargs, engine)


__all__ = ["AGENTS", "AGENT_SPECS", "agent_classes", "make_agent"]
