"""A training run whose learner is two data-parallel ranks on a local Ray (slow; in CI).

The ranks' arithmetic against one learner is checked in tests/distributed/
test_learner_group.py; here the run drives them: steps, pushes from rank 0, a checkpoint
written by rank 0 that resumes, and no Ray left when the run ends."""

from __future__ import annotations

import pytest
from test_train import _config

from langrl.learner import latest_checkpoint
from langrl.training import train

ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_a_run_trains_with_two_learner_ranks_and_resumes(engine, tiny_policy_path, tmp_path):
    ranks = ("--learner.world_size", "2", "--learner.rank_cpus", "0.5")
    version = engine.policy_version
    result = train(_config(tiny_policy_path, tmp_path, "cispo", *ranks), engine)
    assert result["step"] == 2 and engine.policy_version == version + 2
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step_00000002"
    assert not ray.is_initialized()  # the run's local Ray stopped with its ranks
    resumed = train(
        _config(
            tiny_policy_path, tmp_path, "cispo", *ranks, "--total_steps", "3", "--resume", "true"
        ),
        engine,
    )
    assert resumed["step"] == 3
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step_00000003"
