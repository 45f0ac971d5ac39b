"""An agent of your own (``tests/agents/reinforce_agent.py``), named ``module:ClassName`` as
``--agent reinforce_agent:Reinforce`` would name it, trains on the tiny policy with the real
engine and the shared learner (slow). Nothing in langrl names it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from test_train import _config, recorded_steps  # noqa: F401  (e2e settings; a fixture)

from langrl.training import train

# It may start the session engine (up to its 300 s startup_timeout_s), then trains.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]


def test_own_agent_trains_with_the_real_engine(
    engine,
    tiny_policy_path,
    tmp_path,
    monkeypatch,
    recorded_steps,  # noqa: F811
):
    monkeypatch.syspath_prepend(str(ROOT / "tests" / "agents"))
    config = _config(
        tiny_policy_path,
        tmp_path,
        "reinforce_agent:Reinforce",
        "--reinforce.group_size", "4", "--reinforce.max_tokens", "64",
        "--tasks_per_rollout", "2",
    )  # fmt: skip
    assert config.agent_name == "reinforce" and config.agent_config.group_size == 4
    assert config.learner.c_value == 0.0  # the agent's learner_defaults

    result = train(config, engine)

    assert result["step"] == 2 and result["policy_version"] >= 2
    assert recorded_steps, "the learner saw no batch"
    groups: dict[tuple, list] = {}
    for record in recorded_steps:
        assert len(record["batch"]) >= 4
        assert math.isfinite(record["metrics"]["loss/policy"])
        for traj in record["batch"]:
            assert traj.agent == "reinforce" and traj.temperature == 1.0
            assert len(traj.completion_ids) == len(traj.behaviour_logprobs) > 0
            groups.setdefault((tuple(traj.prompt_ids), traj.policy_version), []).append(traj)
    # Group-mean baselines: a whole group's advantages sum to zero.
    whole = [g for g in groups.values() if len(g) == 4]
    assert whole
    for group in whole:
        assert math.isclose(sum(t.advantages[0] for t in group), 0.0, abs_tol=1e-6)
        mean = sum(t.reward for t in group) / 4
        assert all(math.isclose(t.advantages[0], t.reward - mean, abs_tol=1e-6) for t in group)
    assert math.isfinite(result["eval/mean_at_k"])
    assert (tmp_path / "checkpoints").is_dir()
