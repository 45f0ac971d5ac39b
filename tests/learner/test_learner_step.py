"""Learner.step on the tiny random policy: the update moves what each loss says it moves."""

from __future__ import annotations

import dataclasses
import logging
import math

import pytest
import torch
from learner_utils import (
    completion_values,
    make_batch,
    weighted_logprob_objective,
    with_behaviour_logprobs,
)

from langrl.learner import METRIC_TAGS, Learner, LearnerConfig
from langrl.trajectory import Trajectory


def _learner(path, **overrides) -> Learner:
    return Learner(path, LearnerConfig(**overrides))


def _lm_state(learner: Learner) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in learner.model.state_dict().items()}


def test_cispo_step_raises_advantage_weighted_logprob(tiny_policy):
    learner = _learner(tiny_policy, lr=1e-3, c_value=0.0, c_kl=0.0, micro_batch_size=2)
    batch = make_batch(4, advantages=[1.0, -1.0, 0.5, -0.5])
    batch = with_behaviour_logprobs(learner.model, batch)
    before = weighted_logprob_objective(learner.model, batch)
    metrics = learner.step(batch)
    after = weighted_logprob_objective(learner.model, batch)
    assert after > before
    assert set(metrics) <= set(METRIC_TAGS)
    assert metrics["train/ratio_mean"] == pytest.approx(1.0, abs=1e-4)  # on-policy
    assert metrics["train/clip_frac"] == 0.0
    assert learner.global_step == 1


def test_on_policy_ratio_is_one_only_at_the_trajectorys_own_temperature(tiny_policy):
    # Behaviour logprobs taken at T = 0.7 (as the engine reports them): the learner divides
    # the logits by the temperature the trajectory says it was sampled at, so the ratio is 1
    # everywhere, padding and all; a trajectory claiming T = 1 is scored off-policy.
    learner = _learner(tiny_policy, lr=1e-9, micro_batch_size=2, c_kl=0.0)
    batch = with_behaviour_logprobs(learner.model, make_batch(5), temperature=0.7)
    assert all(t.temperature == 0.7 for t in batch)
    assert learner.step(batch)["train/ratio_mean"] == pytest.approx(1.0, abs=1e-4)
    at_one = [dataclasses.replace(t, temperature=1.0) for t in batch]
    assert abs(learner.step(at_one)["train/ratio_mean"] - 1.0) > 1e-2


@pytest.mark.parametrize(
    "shift, advantage, clip_frac",
    [
        (0.0, 1.0, 0.0),  # on policy: nothing capped
        (-2.0, 1.0, 1.0),  # ratio e^2 > eps_high = 5: weight capped
        (-2.0, -1.0, 1.0),  # capped whatever the advantage's sign (unlike PPO)
        (-1.0, 1.0, 0.0),  # ratio e < 5: not capped
    ],
)
def test_clip_fraction(tiny_policy, shift, advantage, clip_frac):
    learner = _learner(tiny_policy, lr=1e-9, c_kl=0.0)
    batch = make_batch(3, advantages=[advantage] * 3)
    batch = with_behaviour_logprobs(learner.model, batch, shift=shift)
    metrics = learner.step(batch)
    assert metrics["train/clip_frac"] == pytest.approx(clip_frac)
    assert metrics["train/ratio_mean"] == pytest.approx(math.exp(-shift), rel=1e-3)


def test_value_loss_decreases_toward_the_rewards(tiny_policy):
    learner = _learner(tiny_policy, lr=3e-3, c_policy=0.0, c_kl=0.0)
    batch = make_batch(4, rewards=[0.5, -0.5, 0.5, -0.5])
    losses = [learner.step(batch)["loss/value"] for _ in range(6)]
    assert losses[0] == pytest.approx(0.25)  # zero-initialised head: V = 0 everywhere
    assert losses[-1] < 0.5 * losses[0]
    values = [v for t in batch for v in completion_values(learner.model, t)]
    rewards = [t.reward for t in batch for _ in t.completion_ids]
    assert sum((v - r) ** 2 for v, r in zip(values, rewards, strict=True)) / len(values) < 0.125


def test_kl_is_zero_at_init_and_positive_after_updates(tiny_policy):
    learner = _learner(tiny_policy, lr=1e-2, c_kl=0.05)
    batch = make_batch(3, advantages=[1.0, -1.0, 1.0])
    first = learner.step(batch)
    assert first["train/kl"] == pytest.approx(0.0, abs=1e-7)
    assert first["loss/kl"] == pytest.approx(0.0, abs=1e-7)
    later = learner.step(batch)
    assert later["train/kl"] > 1e-4 and later["loss/kl"] > 1e-4


def test_no_reference_model_without_kl(tiny_policy):
    learner = _learner(tiny_policy, c_kl=0.0)
    assert learner.ref_model is None
    metrics = learner.step(make_batch(2))
    assert metrics["loss/kl"] == 0.0 and "train/kl" not in metrics


def test_missing_advantages_are_reward_minus_old_value(tiny_policy):
    learner = _learner(tiny_policy, lr=1e-3, c_kl=0.0, micro_batch_size=2)
    # Give the value head a non-trivial output first, so A = r - V differs from r.
    torch.nn.init.normal_(
        learner.model.value_head.fc2.weight, std=0.5, generator=torch.Generator().manual_seed(1)
    )
    batch = make_batch(3, rewards=[1.0, -1.0, 0.3])
    v_old = [completion_values(learner.model, t) for t in batch]
    assert max(abs(v) for vs in v_old for v in vs) > 0.05
    advantages = [t.reward - v for t, vs in zip(batch, v_old, strict=True) for v in vs]
    values = [v for vs in v_old for v in vs]
    metrics = learner.step(batch)
    assert metrics["train/advantage_mean"] == pytest.approx(
        sum(advantages) / len(advantages), abs=1e-5
    )
    assert metrics["train/value_mean"] == pytest.approx(sum(values) / len(values), abs=1e-5)


def test_given_advantages_are_used_as_is(tiny_policy):
    learner = _learner(tiny_policy, c_kl=0.0)
    batch = make_batch(3, rewards=[1.0, 1.0, 1.0], advantages=[0.25, 0.25, 0.25])
    assert learner.step(batch)["train/advantage_mean"] == pytest.approx(0.25)


def test_normalisation_modes_match_hand_computation(tiny_policy):
    # Zero-initialised value head: V = 0, so the value loss per token is reward^2.
    batch = make_batch(3, rewards=[1.0, 0.5, 0.0])
    lengths = [len(t.completion_ids) for t in batch]
    assert len(set(lengths)) > 1  # otherwise the two modes agree
    squares = [t.reward**2 for t in batch]
    token = _learner(tiny_policy, loss_normalization="token", c_kl=0.0).step(batch)
    sequence = _learner(tiny_policy, loss_normalization="sequence", c_kl=0.0).step(batch)
    expected_token = sum(s * n for s, n in zip(squares, lengths, strict=True)) / sum(lengths)
    assert token["loss/value"] == pytest.approx(expected_token, rel=1e-6)
    assert sequence["loss/value"] == pytest.approx(sum(squares) / 3, rel=1e-6)


def _capture_gradients(learner: Learner) -> dict[str, torch.Tensor]:
    """Record the gradients the optimiser steps on (the learner zeroes them afterwards)."""
    grads: dict[str, torch.Tensor] = {}
    step = learner.optimizer.step

    def capturing_step(*args, **kwargs):
        grads.update({n: p.grad.clone() for n, p in learner.model.named_parameters()})
        return step(*args, **kwargs)

    learner.optimizer.step = capturing_step
    return grads


@pytest.mark.parametrize("mode", ["token", "sequence"])
def test_micro_batching_gives_the_full_batch_gradient(tiny_policy, mode):
    batch = make_batch(5, advantages=[1.0, -1.0, 0.5, 0.2, -0.3])
    whole = _learner(tiny_policy, loss_normalization=mode, micro_batch_size=5)
    pieces = _learner(tiny_policy, loss_normalization=mode, micro_batch_size=2)
    g_whole, g_pieces = _capture_gradients(whole), _capture_gradients(pieces)
    m_whole, m_pieces = whole.step(batch), pieces.step(batch)
    for tag in ("loss/total", "loss/policy", "loss/value", "train/grad_norm", "train/entropy"):
        assert m_pieces[tag] == pytest.approx(m_whole[tag], rel=1e-4, abs=1e-6), tag
    assert g_whole.keys() == g_pieces.keys()
    for name, grad in g_whole.items():
        torch.testing.assert_close(g_pieces[name], grad, rtol=1e-3, atol=1e-6, msg=name)


@pytest.mark.parametrize(
    "field, bad",
    [("reward", math.nan), ("behaviour_logprobs", -math.inf), ("advantages", math.nan)],
)
def test_non_finite_batch_is_skipped_and_weights_are_untouched(tiny_policy, caplog, field, bad):
    learner = _learner(tiny_policy, lr=1e-2)
    good = make_batch(3, advantages=[1.0, -1.0, 0.5])
    learner.step(good)  # so that the optimizer has state that must stay untouched too
    weights = _lm_state(learner)
    opt_state = {k: v.clone() for k, v in learner.optimizer.state_dict()["state"][0].items()}
    poisoned = make_batch(3, advantages=[1.0, -1.0, 0.5])
    t = poisoned[1]
    if field == "reward":
        t.reward = bad
    else:
        getattr(t, field)[2] = bad
    with caplog.at_level(logging.WARNING, logger="langrl.learner.learner"):
        metrics = learner.step(poisoned)
    assert metrics["train/skipped_steps"] == 1.0
    assert "trajectory 1" in caplog.text and "skipped" in caplog.text
    for name, tensor in learner.model.state_dict().items():
        assert torch.equal(tensor, weights[name]), name
    for k, v in learner.optimizer.state_dict()["state"][0].items():
        assert torch.equal(v, opt_state[k]), k
    assert learner.global_step == 1
    # The next good step goes through and the running count stays.
    assert learner.step(good)["train/skipped_steps"] == 1.0 and learner.global_step == 2


def test_non_finite_loss_is_skipped_and_weights_are_untouched(tiny_policy, caplog):
    # 1e39 is a finite Python float but overflows float32: the loss becomes inf in-graph.
    learner = _learner(tiny_policy, lr=1e-2)
    weights = _lm_state(learner)
    batch = make_batch(2, advantages=[1e39, 1.0])
    with caplog.at_level(logging.WARNING, logger="langrl.learner.learner"):
        metrics = learner.step(batch)
    assert metrics["train/skipped_steps"] == 1.0
    assert "non-finite loss" in caplog.text
    for name, tensor in learner.model.state_dict().items():
        assert torch.equal(tensor, weights[name]), name
    assert all(p.grad is None for p in learner.model.parameters())
    assert learner.optimizer.state_dict()["state"] == {}


def test_staleness_and_lr_warmup(tiny_policy):
    learner = _learner(tiny_policy, lr=1e-3, warmup_steps=4, c_kl=0.0)
    batch = make_batch(2)
    batch[0].policy_version, batch[1].policy_version = 3, 5
    first = learner.step(batch)
    assert "train/staleness_mean" not in first
    assert first["train/lr"] == pytest.approx(2.5e-4)
    assert learner.step(batch, current_version=6)["train/staleness_mean"] == pytest.approx(2.0)
    learner.current_version = 5
    third = learner.step(batch)
    assert third["train/staleness_mean"] == pytest.approx(1.0)
    assert third["train/lr"] == pytest.approx(7.5e-4)
    assert third["perf/learner_tokens_per_s"] > 0


def test_bfloat16_compute_keeps_float32_master_weights(tiny_policy):
    learner = _learner(tiny_policy, dtype="bfloat16", lr=1e-3)
    batch = make_batch(3, advantages=[1.0, -1.0, 0.5])
    metrics = learner.step(batch)
    assert all(math.isfinite(v) for v in metrics.values())
    assert metrics["train/kl"] == pytest.approx(0.0, abs=1e-6)
    assert all(p.dtype == torch.float32 for p in learner.model.parameters())


def test_structural_errors_raise(tiny_policy):
    learner = _learner(tiny_policy, c_kl=0.0)
    with pytest.raises(ValueError, match="empty batch"):
        learner.step([])
    with pytest.raises(ValueError, match="empty prompt"):
        learner.step([Trajectory([], [5, 6], [-1.0, -1.0], 1.0)])
    with pytest.raises(ValueError, match="outside"):
        learner.step([Trajectory([5], [10_000], [-1.0], 1.0)])
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="Trajectory.temperature must be"):
            Trajectory([5], [6], [-1.0], 1.0, temperature=bad)


def test_every_learner_logprob_matches_an_unpadded_forward(tiny_policy):
    # Per-token alignment check from outside (the independent path indexes positions by
    # hand), with each trajectory at its own temperature, several per micro-batch: behaviour
    # logprobs shifted by -log(1.5) make every ratio 1.5, and CISPO's cap just below it
    # (every token capped) and just above it (none) bounds each token's ratio to 1.5 +- 1e-4.
    batch = make_batch(4, seed=1) + make_batch(4, seed=2)
    learner = _learner(tiny_policy, lr=1e-9, c_kl=0.0, c_value=0.0, micro_batch_size=3)
    batch = [
        with_behaviour_logprobs(learner.model, [t], temperature=temp, shift=-math.log(1.5))[0]
        for t, temp in zip(batch, [1.3, 0.7, 1.0, 0.45] * 2, strict=True)
    ]
    for eps_high, capped in ((1.5 * (1 - 1e-4), 1.0), (1.5 * (1 + 1e-4), 0.0)):
        learner = _learner(
            tiny_policy, lr=1e-9, c_kl=0.0, c_value=0.0, micro_batch_size=3, eps_high=eps_high
        )
        metrics = learner.step(batch)
        assert metrics["train/clip_frac"] == capped
        assert metrics["train/ratio_mean"] == pytest.approx(1.5, rel=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bfloat16_step_export_and_checkpoint(tiny_policy, tmp_path):
    learner = _learner(tiny_policy, device="cuda", dtype="bfloat16", lr=1e-3)
    metrics = learner.step(make_batch(4, advantages=[1.0, -1.0, 0.5, -0.5]))
    assert all(math.isfinite(v) for v in metrics.values())
    lm_state, head_state = learner.export_weights()
    assert all(t.is_cuda for t in [*lm_state.values(), *head_state.values()])
    learner.save_checkpoint(tmp_path, extra={"k": 1})
    resumed = _learner(tiny_policy, device="cuda", dtype="bfloat16", lr=1e-3)
    assert resumed.load_checkpoint(tmp_path) == (1, {"k": 1})
    for name, tensor in learner.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
