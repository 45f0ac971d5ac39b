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
