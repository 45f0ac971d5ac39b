"""Two real vLLM replicas of the tiny test policy on a real local Ray (slow; runs in CI).

After a push every replica serves the learner's logprobs; each agent trains over the two
replicas; a replica killed mid-run leaves the run to finish on the other.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from dataclasses import replace

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_train import _config

from langrl import metrics as tags
from langrl.engine import SamplingConfig, create_engine
from langrl.engine.sync import SyncEngine
from langrl.learner import Learner, LearnerConfig
from langrl.training import train

ray = pytest.importorskip("ray")
pytest.importorskip("vllm")

from langrl.distributed.config import ClusterConfig  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PROMPT = "Numbers: 3 5 7 2\nTarget: 24\n"


@pytest.fixture(scope="module")
def two_replicas(tiny_engine_config) -> Iterator[SyncEngine]:
    """Two vLLM replicas (one CPU each) on a local Ray started for this module."""
    config = replace(tiny_engine_config, replicas=2, replica_cpus=1.0)
    engine = create_engine(config, ClusterConfig(address="local", num_cpus=2))
    try:
        yield engine
    finally:
        engine.shutdown()
    assert not ray.is_initialized()  # the local instance stopped with the engine


def requests_per_replica(engine: SyncEngine) -> list[float]:
    tele = engine.telemetry()
    return [tele[tags.replica_tag(r.index, "requests")] for r in engine.engine.replicas]


def test_after_a_push_every_replica_serves_the_learners_logprobs(two_replicas, tiny_policy_path):
    learner = Learner(tiny_policy_path, LearnerConfig())
    torch.manual_seed(0)
    with torch.no_grad():  # weights the replicas have never seen
        for p in learner.model.lm.parameters():
            p.add_(0.02 * torch.randn_like(p))
    version = two_replicas.load_weights(*learner.export_weights())
    prompt = two_replicas.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    sampling = SamplingConfig(n=2, max_tokens=24, temperature=1.0, seed=3)
    lm = learner.model.lm.eval()
    for replica in two_replicas.engine.replicas:
        generation = ray.get(replica.handle.generate.remote(prompt, sampling))
        assert generation.policy_version == version  # the replica's own count: same pushes
        for sample in generation.samples:
            ids = torch.tensor([prompt + sample.token_ids])
            with torch.no_grad():
                logp = lm(ids).logits[0, :-1].float().log_softmax(-1)
            target = ids[0, 1:]
            expected = logp.gather(-1, target[:, None])[:, 0][len(prompt) - 1 :]
            gap = (torch.tensor(sample.logprobs) - expected).abs().max().item()
            assert gap < 1e-3, (replica.index, gap)


@pytest.mark.parametrize("agent", ["mcts", "cispo", "bon"])
def test_each_agent_trains_over_two_replicas(agent, two_replicas, tiny_policy_path, tmp_path):
    before = requests_per_replica(two_replicas)
    version = two_replicas.policy_version
    config = _config(tiny_policy_path, tmp_path, agent, "--engine.replicas", "2")
    result = train(config, two_replicas)
    assert result["step"] == 2 and two_replicas.policy_version == version + 2
    after = requests_per_replica(two_replicas)
    assert all(a > b for a, b in zip(after, before, strict=True))  # both replicas served
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {tags.PERF_REPLICAS_ALIVE, tags.replica_tag(1, "generated_tokens")} <= scalars
    assert [e.value for e in acc.Scalars(tags.PERF_REPLICAS_ALIVE)] == [2.0, 2.0]
    unlisted = {t for t in scalars - set(tags.TAGS) if not t.startswith("search/")}
    assert all(tags.is_replica_tag(t) for t in unlisted), unlisted


def test_a_replica_killed_mid_run_leaves_the_run_to_finish(
    two_replicas, tiny_policy_path, tmp_path, monkeypatch, caplog
):
    """Runs last in this module: it leaves the fixture with one replica."""
    victim = two_replicas.engine.replicas[0]
    original = Learner.step
    steps: list[int] = []

    def kill_at_first_step(self, batch, current_version=None):  # noqa: ANN001
        if not steps:  # the next rollout is in flight on both replicas (async mode)
            os.kill(victim.info["pid"], signal.SIGKILL)
        steps.append(len(batch))
        return original(self, batch, current_version=current_version)

    monkeypatch.setattr(Learner, "step", kill_at_first_step)
    config = _config(tiny_policy_path, tmp_path, "cispo", "--total_steps", "4")
    with caplog.at_level(logging.WARNING, logger="langrl.distributed.replicated_engine"):
        result = train(config, two_replicas)
    assert result["step"] == 4 and len(steps) == 4
    assert "engine replica 0" in caplog.text and "left the rotation" in caplog.text
    tele = two_replicas.telemetry()
    assert tele[tags.PERF_REPLICAS_ALIVE] == 1 and tele[tags.PERF_REPLICAS_LOST_TOTAL] == 1
    # The survivor serves the trained weights: its values moved with the pushes.
    assert two_replicas.generate(PROMPT, SamplingConfig(max_tokens=4)).samples
