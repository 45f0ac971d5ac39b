"""LearnerGroup on a real local Ray: two data-parallel ranks train the weights one learner
trains (fp32, to 1e-5), checkpoint through rank 0, fail in one line when a rank dies, and
leave no actor behind."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
import torch

from langrl.learner import Learner, LearnerConfig
from langrl.tiny.model import build_random_policy
from langrl.trajectory import Trajectory

ray = pytest.importorskip("ray")
from langrl.distributed.learner_group import LearnerGroup  # noqa: E402 - after the skip

pytestmark = pytest.mark.timeout(600)

#: fp32 data parallelism changes only the float summation order of the gradients.
TOLERANCE = 1e-5
CONFIG = LearnerConfig(
    lr=1e-3,  # large enough that two steps visibly move the weights
    value_lr=1e-2,
    micro_batch_size=2,  # 6 trajectories: 3 micro-batches, rank 0 trains two, rank 1 one
    world_size=2,
    seed=0,
)


@pytest.fixture(scope="module")
def local_ray():
    """One small local Ray instance for the module (the group joins it)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return build_random_policy(tmp_path_factory.mktemp("policy"), preset="test", seed=0)


@pytest.fixture
def one_thread():
    """The in-process learner on one thread, like each rank (Ray: 1 CPU, 1 OpenMP thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_batch(n: int, seed: int) -> list[Trajectory]:
    """``n`` trajectories of mixed prompt and completion lengths, rewards of both signs."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        p_len, c_len = 2 + (3 * i) % 5, 3 + (5 * i) % 7
        prompt = torch.randint(3, 100, (p_len,), generator=g).tolist()
        completion = torch.randint(3, 100, (c_len,), generator=g).tolist()
        logprobs = (-1.0 - torch.rand(c_len, generator=g)).tolist()
        reward = 1.0 if i % 3 == 0 else -0.5
        out.append(Trajectory(prompt, completion, logprobs, reward))
    return out


def max_weight_diff(a, b) -> float:
    """Largest absolute difference over every tensor of two ``export_weights`` results."""
    diffs = []
    for state_a, state_b in zip(a, b, strict=True):
        assert state_a.keys() == state_b.keys()
        diffs += [(state_a[k].cpu() - state_b[k].cpu()).abs().max().item() for k in state_a]
    return max(diffs)


def assert_metrics_match(group_metrics, single_metrics) -> None:
    assert group_metrics.keys() == single_metrics.keys()
    for tag, value in single_metrics.items():
        if not tag.startswith("perf/"):
            assert group_metrics[tag] == pytest.approx(value, abs=TOLERANCE), tag


def test_two_ranks_train_what_one_learner_trains(local_ray, policy, one_thread, tmp_path):
    single = Learner(policy, replace(CONFIG, world_size=1))
    start = single.export_weights()
    start = tuple({k: v.clone() for k, v in state.items()} for state in start)
    group = LearnerGroup(policy, CONFIG)
    handles = list(group._ranks)
    try:
        assert group.config is CONFIG
        assert max_weight_diff(group.export_weights(), start) == 0.0

        # The second batch carries value-only trajectories too (their own micro-batches,
        # shared round-robin like the rest): the whole-batch normalisers keep it exact.
        value_only = make_batch(5, seed=5)
        for traj in value_only:
            traj.value_only = True
        batches = [make_batch(6, seed=1), make_batch(6, seed=2) + value_only]
        for step, batch in enumerate(batches):
            group_metrics = group.step(batch, current_version=step)
            single_metrics = single.step(batch, current_version=step)
            assert_metrics_match(group_metrics, single_metrics)
        assert group_metrics["train/value_only_trajectories"] == 5.0
        assert group.global_step == single.global_step == 2
        diff = max_weight_diff(group.export_weights(), single.export_weights())
        print(f"max |weight difference| after 2 steps: {diff:.3g}")
        assert diff <= TOLERANCE
        assert max_weight_diff(group.export_weights(), start) > 1e-3  # the steps did train

        saved = group.export_weights()
        path = group.save_checkpoint(tmp_path / "ckpt", extra={"data_position": 12})
        assert path == tmp_path / "ckpt" / "step_00000002"

        # One micro-batch only: rank 1 trains nothing, yet takes part in the all-reduce.
        small = make_batch(2, seed=3)
        assert_metrics_match(group.step(small), single.step(small))
        assert max_weight_diff(group.export_weights(), single.export_weights()) <= TOLERANCE
        assert group.global_step == 3

        assert group.load_checkpoint(path) == (2, {"data_position": 12})
        assert group.global_step == 2
        assert max_weight_diff(group.export_weights(), saved) == 0.0
    finally:
        group.shutdown()
    group.shutdown()  # idempotent
    # ray.kill is asynchronous: a call made right after it may still be answered.
    deadline = time.monotonic() + 30
    for handle in handles:
        with pytest.raises(ray.exceptions.RayActorError):
            while time.monotonic() < deadline:
                ray.get(handle.__ray_ready__.remote(), timeout=30)
                time.sleep(0.2)
    with pytest.raises(RuntimeError, match="shut down"):
        group.step(make_batch(2, seed=4))


def test_a_rank_error_is_reraised_and_a_dead_rank_fails_in_one_line(local_ray, policy):
    with LearnerGroup(policy, replace(CONFIG, c_kl=0.0)) as group:
        # A rank's own exception arrives as itself, and leaves the group usable.
        with pytest.raises(ValueError, match="empty batch"):
            group.step([])
        assert group.export_weights()[1]
        ray.kill(group._ranks[1], no_restart=True)
        with pytest.raises(RuntimeError, match="learner rank 1 died during step") as err:
            group.step(make_batch(6, seed=1))
        assert "\n" not in str(err.value)
        with pytest.raises(RuntimeError, match="unusable .learner rank 1 died"):
            group.export_weights()
