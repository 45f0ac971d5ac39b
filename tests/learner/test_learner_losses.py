"""Each loss against a hand computation of its paper's formula (pure tensor tests, no model)."""

from __future__ import annotations

import math

import pytest
import torch

from langrl.learner import losses
from langrl.learner.config import POLICY_LOSS_NAMES
from langrl.learner.losses import (
    POLICY_LOSSES,
    cispo_policy_loss,
    entropy_from_logits,
    k3_kl,
    logprobs_from_logits,
    masked_mean,
    value_loss,
)

VALUES = torch.tensor([[1.0, 2.0, 3.0, 0.0], [10.0, 0.0, 0.0, 0.0]])  # (2, 4)
MASK = torch.tensor([[True, True, True, False], [True, False, False, False]])


def test_masked_mean_token_mode_is_sum_over_all_tokens_divided_by_count():
    assert masked_mean(VALUES, MASK, "token").item() == pytest.approx((1 + 2 + 3 + 10) / 4)


def test_masked_mean_sequence_mode_is_mean_of_per_sequence_means():
    assert masked_mean(VALUES, MASK, "sequence").item() == pytest.approx((2.0 + 10.0) / 2)


def test_masked_mean_ignores_non_finite_masked_out_entries():
    values = VALUES.clone()
    values[0, 3] = math.inf
    values[1, 2] = math.nan
    assert masked_mean(values, MASK, "token").item() == pytest.approx(4.0)


def test_masked_mean_empty_mask_is_zero_and_unknown_mode_raises():
    assert masked_mean(VALUES, torch.zeros_like(MASK), "token").item() == 0.0
    assert masked_mean(VALUES, torch.zeros_like(MASK), "sequence").item() == 0.0
    with pytest.raises(ValueError, match="'mean'"):
        masked_mean(VALUES, MASK, "mean")


@pytest.mark.parametrize("mode, normalizer", [("token", 4), ("sequence", 2)])
def test_masked_mean_normalizer_makes_micro_batches_sum_to_the_full_mean(mode, normalizer):
    full = masked_mean(VALUES, MASK, mode)
    parts = sum(masked_mean(VALUES[i : i + 1], MASK[i : i + 1], mode, normalizer) for i in range(2))
    assert parts.item() == pytest.approx(full.item())


def _policy_inputs():
    logp = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)  # (1, 3)
    old = torch.tensor([[-1.0, -4.0, -0.2]])  # ratios: 1, e^2 = 7.39, e^-0.3 = 0.74
    adv = torch.tensor([[0.5, 1.0, -2.0]])
    mask = torch.tensor([[True, True, True]])
    return logp, old, adv, mask


def test_cispo_matches_hand_computation_and_gradient():
    logp, old, adv, mask = _policy_inputs()
    loss, diag = cispo_policy_loss(logp, old, adv, mask, eps_high=5.0)
    ratio = [1.0, math.exp(2.0), math.exp(-0.3)]
    weight = [min(r, 5.0) for r in ratio]  # the second token hits the cap
    a, lp = [0.5, 1.0, -2.0], [-1.0, -2.0, -0.5]
    expected = -sum(w * ai * li for w, ai, li in zip(weight, a, lp, strict=True)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    # The weight is stop-gradiented: d loss / d logp_t = -w_t * A_t / n, nonzero even when capped.
    expected_grad = [-w * ai / 3 for w, ai in zip(weight, a, strict=True)]
    assert logp.grad[0].tolist() == pytest.approx(expected_grad, rel=1e-6)
    assert diag["clip_frac"].item() == pytest.approx(1 / 3)
    assert diag["ratio_mean"].item() == pytest.approx(sum(ratio) / 3, rel=1e-6)


def test_policy_losses_registry_matches_config_names():
    assert set(POLICY_LOSSES) == set(POLICY_LOSS_NAMES)
    assert POLICY_LOSSES["cispo"] is losses.cispo_policy_loss


def test_value_loss_is_masked_mse_without_half():
    values = torch.tensor([[0.5, -0.5, 9.0]])
    returns = torch.tensor([[1.0, 1.0, 1.0]])
    mask = torch.tensor([[True, True, False]])
    assert value_loss(values, returns, mask).item() == pytest.approx((0.25 + 2.25) / 2)


def test_k3_matches_formula_is_zero_when_equal_and_nonnegative():
    logp = torch.tensor([-1.0, -2.0, -0.1])
    ref = torch.tensor([-1.0, -0.5, -3.0])
    expected = [
        math.exp(r - x) - (r - x) - 1 for r, x in zip(ref.tolist(), logp.tolist(), strict=True)
    ]
    assert k3_kl(logp, ref).tolist() == pytest.approx(expected, rel=1e-6)
    assert k3_kl(logp, logp).tolist() == [0.0, 0.0, 0.0]
    assert (k3_kl(logp, ref) >= 0).all()


def test_k3_is_an_unbiased_estimate_of_kl_under_samples_from_pi():
    g = torch.Generator().manual_seed(0)
    pi = torch.softmax(torch.tensor([1.0, 0.0, -1.0, 0.5]), -1)
    ref = torch.softmax(torch.tensor([0.0, 0.5, 0.0, -0.5]), -1)
    exact = (pi * (pi.log() - ref.log())).sum().item()
    samples = torch.multinomial(pi, 200_000, replacement=True, generator=g)
    estimate = k3_kl(pi.log()[samples], ref.log()[samples]).mean().item()
    assert estimate == pytest.approx(exact, rel=0.03)


def test_logprobs_and_entropy_from_logits_with_temperature():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 7, generator=g)  # (B, T, V)
    targets = torch.randint(0, 7, (2, 3), generator=g)
    for temperature in (1.0, 0.5):
        expected = torch.log_softmax(logits / temperature, -1).gather(-1, targets[..., None])[
            ..., 0
        ]
        got = logprobs_from_logits(logits, targets, temperature)
        torch.testing.assert_close(got, expected)
        dist = torch.distributions.Categorical(logits=logits / temperature)
        torch.testing.assert_close(entropy_from_logits(logits, temperature), dist.entropy())
    # Lower temperature sharpens the distribution: lower entropy.
    assert (entropy_from_logits(logits, 0.5) < entropy_from_logits(logits, 1.0)).all()


def test_a_temperature_per_position_is_each_positions_own_scalar_bit_for_bit():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 7, generator=g)  # (N, V)
    targets = torch.randint(0, 7, (3,), generator=g)  # (N,)
    temps = torch.tensor([0.8, 1.3, 0.8])  # (N,)
    got = logprobs_from_logits(logits, targets, temps[:, None])
    entropy = entropy_from_logits(logits, temps[:, None])
    for i, t in enumerate(temps.tolist()):  # the learner's division, tensor or number
        assert torch.equal(got[i], logprobs_from_logits(logits, targets, t)[i])
        assert torch.equal(entropy[i], entropy_from_logits(logits, t)[i])
