"""The data-parallel helpers without Ray: inert alone, exact over a group of one, in sync with
the metric parts ``Learner._forward_backward`` returns; the learner-rank settings."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from learner_utils import make_batch

from langrl.learner import Learner, LearnerConfig
from langrl.learner import data_parallel as dp
from langrl.learner.learner import _collate


@pytest.fixture
def group_of_one(tmp_path):
    """A one-rank gloo process group in this process, destroyed afterwards."""
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_current_is_none_without_a_process_group():
    assert not dist.is_initialized()
    assert dp.current() is None


def test_current_is_none_for_a_group_of_one(group_of_one):
    # One rank trains alone: Learner.step takes its one-process path, no collective runs.
    assert dp.current() is None


def test_ranks_share_micro_batches_round_robin():
    owned = [[i for i in range(7) if dp.Ranks(r, 3).owns(i)] for r in range(3)]
    assert owned == [[0, 3, 6], [1, 4], [2, 5]]


def test_all_reduce_step_over_one_rank_keeps_everything(group_of_one):
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    params = list(model.parameters())
    model(torch.ones(4, 3)).sum().backward()
    params[3].grad = None  # e.g. a frozen part: no rank gave it a gradient
    before = [None if p.grad is None else p.grad.clone() for p in params]
    sums = {"loss/total": torch.tensor(1.5), "sum/value": torch.tensor(-2.0)}
    rows = torch.tensor([0.25, 0.0, -1.0])
    reduced, reduced_rows = dp.all_reduce_step(params, sums, ["loss/total", "sum/value", "x"], rows)
    for p, old in zip(params, before, strict=True):
        if old is None:
            assert p.grad is None  # AdamW must still skip it
        else:
            assert torch.equal(p.grad, old)
    assert {k: float(v) for k, v in reduced.items()} == {
        "loss/total": 1.5,
        "sum/value": -2.0,
        "x": 0.0,  # a part this rank lacks counts as zero
    }
    assert torch.equal(reduced_rows, rows)
    with pytest.raises(ValueError, match="not in names"):
        dp.all_reduce_step(params, sums, ["loss/total"], rows)


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # reference model: "sum/kl" from the k3 tokens
        {"c_kl": 0.0},  # no reference: no "sum/kl"
        {"value_warmup_steps": 1},  # value warm-up with a reference: "sum/kl" = 0
    ],
)
@pytest.mark.parametrize("value_only_rows", [False, True])
def test_part_names_are_what_forward_backward_returns(tiny_policy, overrides, value_only_rows):
    learner = Learner(tiny_policy, LearnerConfig(**overrides))
    batch = make_batch(2)
    for traj in batch:  # a micro-batch of Trajectory.value_only rows takes its own path
        traj.value_only = value_only_rows
    mb = _collate(batch, learner._pad_id)
    assert mb.value_only == value_only_rows
    value_only = learner.global_step < learner.config.value_warmup
    parts, _ = learner._forward_backward(
        mb, normalizer=10, value_normalizer=12, value_only=value_only
    )
    assert sorted(parts) == sorted(learner._part_names())


@pytest.mark.parametrize(
    "kwargs, quoted",
    [
        ({"world_size": 0}, "LearnerConfig.world_size must be an int >= 1, got 0"),
        ({"world_size": 2.0}, "got 2.0"),
        ({"rank_cpus": 0}, "rank_cpus must be a number > 0, got 0"),
        ({"rank_cpus": True}, "got True"),
        ({"rank_cpus": float("nan")}, "got nan"),
        ({"world_size": 2, "device": "cuda:1"}, "device 'cuda:1' names one GPU"),
    ],
)
def test_rank_settings_are_validated(kwargs, quoted):
    with pytest.raises(ValueError) as err:
        LearnerConfig(**kwargs)
    assert quoted in str(err.value)


def test_rank_settings_accepted():
    cfg = LearnerConfig(world_size=4, rank_cpus=2, device="cuda")
    assert (cfg.world_size, cfg.rank_cpus) == (4, 2)
    assert LearnerConfig(device="cuda:1").world_size == 1  # one rank may name its GPU
    assert LearnerConfig.from_dict(cfg.to_dict()) == cfg
