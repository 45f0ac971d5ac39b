"""The agent registry: names, lazy import, one-line error for an unknown name."""

from __future__ import annotations

import pytest
from sampling_fakes import ScriptedEngine

from langrl.agents import AGENTS, make_agent


def test_registry_lists_every_agent():
    assert list(AGENTS) == ["mcts", "cispo", "bon"]


@pytest.mark.parametrize("name", ["cispo", "bon"])
def test_make_agent_builds_from_a_dict_of_fields(name):
    agent = make_agent(name, {"num_prompts": 2}, "Countdown-v0", {}, ScriptedEngine({}))
    assert agent.name == name
    assert agent.config.num_prompts == 2


def test_unknown_agent_is_a_one_line_error_listing_valid_names():
    with pytest.raises(ValueError) as err:
        make_agent("ppo", None, "Countdown-v0", {}, ScriptedEngine({}))
    assert "\n" not in str(err.value)
    assert "mcts, cispo, bon" in str(err.value)


def test_agents_declare_their_contract():
    from langrl.envs.base import CONTRACT_MEMBERS

    for name, (config_cls, agent_cls) in AGENTS.items():
        assert agent_cls.name == name
        assert agent_cls.config_class is config_cls
        assert set(agent_cls.env_uses) <= set(CONTRACT_MEMBERS)
    mcts, cispo, bon = (AGENTS[name] for name in ("mcts", "cispo", "bon"))
    assert mcts[1].env_uses == ("rollouts", "search")
    assert cispo[1].env_uses == bon[1].env_uses == ("rollouts",)
    assert cispo[1].learner_defaults(cispo[0]()) == {"c_value": 0.0}
    assert bon[1].learner_defaults(bon[0]()) == {}
    assert mcts[1].learner_defaults(mcts[0]()) == {}
    assert mcts[1].learner_defaults(mcts[0](value_head=False)) == {"c_value": 0.0}
