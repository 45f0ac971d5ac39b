"""A third env, written only against the public env contract, trains with every agent (slow).

``tests/envs/sum_env.py`` (the worked example in the README) is taken by Gymnasium's
``module:EnvId`` convention, exactly as ``scripts/train_agent.py --env sum_env:Sum-v0``
would: nothing in langrl names it.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from test_train import _config, recorded_steps  # noqa: F401  (e2e settings; a fixture)

from langrl.training import train

# It may start the session engine (up to its 300 s startup_timeout_s), then trains each agent.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("agent", ["mcts", "cispo", "bon"])
def test_own_env_trains_with_every_agent(
    agent,
    engine,
    tiny_policy_path,
    tmp_path,
    monkeypatch,
    recorded_steps,  # noqa: F811
):
    monkeypatch.syspath_prepend(str(ROOT / "tests" / "envs"))
    config = _config(tiny_policy_path, tmp_path, agent, env_id="sum_env:Sum-v0")
    assert config.train_split_size() == 64

    result = train(config, engine)

    assert result["step"] == 2
    for record in recorded_steps:  # the learner trained on Sum-v0 episodes
        for traj in record["batch"]:
            assert engine.tokenizer.decode(traj.prompt_ids).endswith("Target: sum\n")
            assert len(traj.completion_ids) == len(traj.behaviour_logprobs) > 0
    assert math.isfinite(result["eval/mean_at_k"])
    samples = (tmp_path / "eval_history.csv").read_text()
    assert samples.count("\n") >= 2  # the start and the end evaluations
