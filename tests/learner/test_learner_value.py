"""The value head's optimisation: its own lr group, initial value, warm-up, per-group lr
schedules through checkpoints, and the value/reward calibration metrics."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from learner_utils import completion_values, make_batch, with_behaviour_logprobs

from langrl.learner import METRIC_TAGS, Learner, LearnerConfig
from langrl.learner.learner import (
    MANIFEST_FILE,
    OPTIMIZER_FILE,
    POLICY_GROUP,
    STATE_FILE,
    VALUE_GROUP,
)
from langrl.policy_model import VALUE_HEAD_DIR
from langrl.trajectory import Trajectory


def _learner(path, **overrides) -> Learner:
    return Learner(path, LearnerConfig(**overrides))


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _group_lrs(learner: Learner) -> dict[str, float]:
    return {group["name"]: group["lr"] for group in learner.optimizer.param_groups}


def _no_value_head(tiny_policy, tmp_path):
    """A copy of the tiny policy without a saved value head (as a hub model would be)."""
    return shutil.copytree(
        tiny_policy, tmp_path / "no_head", ignore=shutil.ignore_patterns(VALUE_HEAD_DIR)
    )


# --- the value head's own learning rate ---------------------------------------------------------


def test_value_lr_lets_the_value_track_the_reward_where_the_policy_lr_cannot(tiny_policy):
    # The failure seen in a real run: rewards around -0.5, a policy lr of 1e-5 shared by the
    # head, and V stuck at 0. The test preset (hidden 128) needs value_lr 3e-3 to get there in
    # 5 steps; the default preset (hidden 256) gets there in about 6 at 1e-3 (measured).
    batch = make_batch(8, rewards=[-0.5] * 8)
    shared = _learner(tiny_policy, lr=1e-5, c_kl=0.0)
    separate = _learner(tiny_policy, lr=1e-5, value_lr=3e-3, c_kl=0.0)
    # train/value_mean is V_old: reading k is the value after k - 1 updates.
    shared_values = [shared.step(batch)["train/value_mean"] for _ in range(6)]
    separate_values = [separate.step(batch)["train/value_mean"] for _ in range(6)]
    assert max(abs(v) for v in shared_values) < 0.01
    assert any(abs(v + 0.5) < 0.15 for v in separate_values[1:])
    assert _group_lrs(separate) == {POLICY_GROUP: 1e-5, VALUE_GROUP: 3e-3}


def test_value_lr_defaults_to_lr_and_is_not_warmed_up(tiny_policy):
    learner = _learner(tiny_policy, lr=1e-3, warmup_steps=4, c_kl=0.0)
    metrics = learner.step(make_batch(2))
    assert metrics["train/lr"] == pytest.approx(2.5e-4)
    assert _group_lrs(learner) == {POLICY_GROUP: pytest.approx(2.5e-4), VALUE_GROUP: 1e-3}


def test_lr_schedule_per_group_with_value_warmup(tiny_policy):
    # Policy: 0 during the 2 value warm-up steps, then warm-up over 4 of its own steps.
    learner = _learner(
        tiny_policy, lr=1e-3, value_lr=5e-3, warmup_steps=4, value_warmup_steps=2, c_kl=0.0
    )
    expected_policy = [0.0, 0.0, 2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3]
    batch = make_batch(2)
    for want in expected_policy:
        assert learner.step(batch)["train/lr"] == pytest.approx(want)
        assert _group_lrs(learner) == {POLICY_GROUP: pytest.approx(want), VALUE_GROUP: 5e-3}


def test_group_lrs_survive_a_checkpoint_and_the_current_config_wins(tiny_policy, tmp_path):
    config = {"lr": 1e-3, "value_lr": 5e-3, "warmup_steps": 4, "c_kl": 0.0}
    trained = _learner(tiny_policy, **config)
    batch = make_batch(3, advantages=[1.0, -1.0, 0.5])
    trained.step(batch)
    trained.save_checkpoint(tmp_path)
    saved = torch.load(tmp_path / "step_00000001" / OPTIMIZER_FILE, weights_only=True)
    assert [g["name"] for g in saved["param_groups"]] == [POLICY_GROUP, VALUE_GROUP]

    resumed = _learner(tiny_policy, **config)
    resumed.load_checkpoint(tmp_path)
    # Set for the NEXT step (1), not left at the saved step-0 values.
    assert _group_lrs(resumed) == {POLICY_GROUP: pytest.approx(5e-4), VALUE_GROUP: 5e-3}
    trained.step(batch)
    resumed.step(batch)
    assert _same(_state(resumed.model), _state(trained.model))

    changed = _learner(tiny_policy, **(config | {"value_lr": 1e-4}))
    changed.load_checkpoint(tmp_path)
    assert _group_lrs(changed)[VALUE_GROUP] == 1e-4


def test_a_one_group_optimizer_state_loads_into_the_two_groups(tiny_policy, tmp_path):
    # Checkpoints written before the value head had its own group hold one group.
    trained = _learner(tiny_policy, lr=1e-3, c_kl=0.0)
    batch = make_batch(3, advantages=[1.0, -1.0, 0.5])
    trained.step(batch)
    path = trained.save_checkpoint(tmp_path)
    state = torch.load(path / OPTIMIZER_FILE, weights_only=True)
    policy, value = state["param_groups"]
    one = {k: v for k, v in policy.items() if k != "name"}
    one["params"] = policy["params"] + value["params"]
    torch.save({"state": state["state"], "param_groups": [one]}, path / OPTIMIZER_FILE)
    # Such checkpoints had no manifest (learner_state.json format_version 1).
    (path / MANIFEST_FILE).unlink()
    meta = json.loads((path / STATE_FILE).read_text())
    (path / STATE_FILE).write_text(json.dumps({**meta, "format_version": 1}))

    resumed = _learner(tiny_policy, lr=1e-3, c_kl=0.0)
    resumed.load_checkpoint(tmp_path)
    assert [g["name"] for g in resumed.optimizer.param_groups] == [POLICY_GROUP, VALUE_GROUP]
    trained.step(batch)
    resumed.step(batch)
    assert _same(_state(resumed.model), _state(trained.model))


# --- the value head's initial value -------------------------------------------------------------


def test_a_new_value_head_starts_at_zero_everywhere(tiny_policy, tmp_path):
    learner = _learner(_no_value_head(tiny_policy, tmp_path), c_kl=0.0)
    batch = make_batch(3)
    assert all(v == 0.0 for t in batch for v in completion_values(learner.model, t))
    assert torch.count_nonzero(learner.model.value_head.fc2.weight) == 0
    assert learner.step(batch)["train/value_mean"] == 0.0


# --- value warm-up ---------------------------------------------------------


def test_value_warmup_trains_only_the_head_and_leaves_the_lm_bit_identical(tiny_policy):
    # Large lr and weight decay: any gradient (or decay) reaching the LM would show.
    learner = _learner(
        tiny_policy, lr=1e-2, value_lr=1e-2, weight_decay=0.1, c_kl=0.05, value_warmup_steps=2
    )
    batch = with_behaviour_logprobs(learner.model, make_batch(4, advantages=[1.0, -1.0] * 2))
    lm, head = _state(learner.model.lm), _state(learner.model.value_head)
    for _ in range(2):
        metrics = learner.step(batch)
        assert metrics["train/lr"] == 0.0
        assert metrics["loss/total"] == pytest.approx(metrics["loss/value"])  # c_value = 1
        assert metrics["train/kl"] == 0.0
    assert _same(_state(learner.model.lm), lm)
    assert not _same(_state(learner.model.value_head), head)
    lm_params = {id(p) for p in learner.model.lm.parameters()}
    assert not any(id(p) in lm_params for p in learner.optimizer.state)  # no Adam state either
    # The warm-up is over: the policy trains.
    assert learner.step(batch)["train/lr"] == 1e-2
    assert not _same(_state(learner.model.lm), lm)


# --- calibration metrics ------------------------------------------------------------------------


def _feature_batch(n: int = 8) -> list[Trajectory]:
    """Reward +0.6 for completions drawn from low token ids, -0.6 for high ones: a feature
    the head can fit from its input."""
    g = torch.Generator().manual_seed(3)
    out = []
    for i in range(n):
        low = i % 2 == 0
        completion = (
            torch.randint(3, 30, (6,), generator=g)
            if low
            else torch.randint(60, 100, (6,), generator=g)
        )
        prompt = torch.randint(3, 100, (3,), generator=g)
        out.append(
            Trajectory(prompt.tolist(), completion.tolist(), [-2.0] * 6, 0.6 if low else -0.6)
        )
    return out


def test_value_reward_corr_is_pearson_of_mean_v_old_and_reward(tiny_policy):
    learner = _learner(tiny_policy, lr=1e-5, value_lr=3e-3, c_policy=0.0, c_kl=0.0)
    batch = _feature_batch()
    first = learner.step(batch)
    assert "train/value_reward_corr" not in first  # zero-initialised head: V is constant
    for _ in range(6):
        learner.step(batch)
    v_old = [sum(vs) / len(vs) for vs in (completion_values(learner.model, t) for t in batch)]
    rewards = [t.reward for t in batch]
    expected = torch.corrcoef(torch.tensor([v_old, rewards], dtype=torch.float64))[0, 1].item()
    metrics = learner.step(batch)
    assert metrics["train/value_reward_corr"] == pytest.approx(expected, abs=1e-4)
    assert metrics["train/value_reward_corr"] > 0.5  # the head learned the feature
    assert metrics["train/reward_mean_batch"] == pytest.approx(0.0)
    assert set(metrics) <= set(METRIC_TAGS)


def test_value_reward_corr_is_omitted_for_constant_rewards(tiny_policy):
    learner = _learner(tiny_policy, value_lr=1e-2, c_kl=0.0)
    torch.nn.init.normal_(
        learner.model.value_head.fc2.weight, std=0.5, generator=torch.Generator().manual_seed(1)
    )  # a head whose values vary, so only the rewards are constant
    metrics = learner.step(make_batch(4, rewards=[-0.5] * 4))
    assert "train/value_reward_corr" not in metrics
    assert metrics["train/reward_mean_batch"] == pytest.approx(-0.5)


# --- value-only trajectories (Trajectory.value_only) ---


def _value_only(batch: list[Trajectory]) -> list[Trajectory]:
    for traj in batch:
        traj.value_only = True
    return batch


def test_value_only_trajectories_train_the_head_and_never_the_lm(tiny_policy):
    learner = _learner(tiny_policy, value_warmup_steps=0, weight_decay=0.1, value_lr=1e-2)
    lm, head = _state(learner.model.lm), _state(learner.model.value_head)
    batch = _value_only(make_batch(6, seed=3, rewards=[1.0] * 6))
    before = completion_values(learner.model, batch[0])
    metrics = learner.step(batch)
    assert metrics["train/value_only_trajectories"] == 6.0
    assert metrics["loss/policy"] == 0.0 and metrics["train/entropy"] == 0.0
    assert metrics["loss/value"] > 0
    assert _same(_state(learner.model.lm), lm)  # no gradient, so no AdamW decay either
    assert not _same(_state(learner.model.value_head), head)
    for _ in range(5):
        learner.step(batch)
    after = completion_values(learner.model, batch[0])
    assert sum(after) / len(after) > sum(before) / len(before) + 0.1  # towards the reward 1


def test_value_only_trajectories_ride_along_without_touching_the_policy_terms(tiny_policy):
    plain = _learner(tiny_policy, value_warmup_steps=0, micro_batch_size=3)
    mixed = _learner(tiny_policy, value_warmup_steps=0, micro_batch_size=3)
    policy = with_behaviour_logprobs(plain.model, make_batch(4, seed=1))
    extra = _value_only(make_batch(5, seed=2, rewards=[-1.0] * 5))
    a = plain.step(policy)
    b = mixed.step([extra[0], *policy, *extra[1:]])  # any order: they are sorted apart
    for tag in ("loss/policy", "loss/kl", "train/entropy", "train/clip_frac",
                "train/reward_mean_batch"):  # fmt: skip
        assert b[tag] == pytest.approx(a[tag], rel=1e-5, abs=1e-7), tag
    assert a["train/value_only_trajectories"] == 0.0
    assert b["train/value_only_trajectories"] == 5.0
    # The value term now averages over every trajectory's tokens, value-only ones included.
    tokens = sum(len(t.completion_ids) for t in policy)
    extra_tokens = sum(len(t.completion_ids) for t in extra)
    start = _learner(tiny_policy).model  # V_old: the weights before either step
    expected = sum(
        (v - t.reward) ** 2 for t in [*policy, *extra] for v in completion_values(start, t)
    )
    assert b["loss/value"] == pytest.approx(expected / (tokens + extra_tokens), rel=1e-4)


def test_value_only_accumulation_is_exact_across_micro_batch_sizes(tiny_policy):
    batch = [*make_batch(4, seed=1), *_value_only(make_batch(5, seed=2))]
    small = _learner(tiny_policy, value_warmup_steps=0, micro_batch_size=1).step(batch)
    large = _learner(tiny_policy, value_warmup_steps=0, micro_batch_size=64).step(batch)
    for tag in ("loss/value", "loss/policy", "loss/total", "train/grad_norm"):
        assert small[tag] == pytest.approx(large[tag], rel=1e-4), tag


def test_value_only_trajectories_are_ignored_without_a_value_term(tiny_policy):
    a = _learner(tiny_policy, c_value=0.0)
    b = _learner(tiny_policy, c_value=0.0)
    policy = make_batch(4, seed=1)
    ma = a.step(policy)
    mb = b.step([*policy, *_value_only(make_batch(3, seed=2))])
    assert mb["train/value_only_trajectories"] == 0.0
    assert ma["loss/total"] == mb["loss/total"]
    assert _same(_state(a.model.lm), _state(b.model.lm))
