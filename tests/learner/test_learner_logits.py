"""The learner's logits: a float32 output layer under bf16 autocast, and logprobs computed for
trained positions only, in chunks, with exactly the maths of the full-vocabulary computation."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from learner_utils import make_batch
from torch import nn

from langrl.learner import Learner, LearnerConfig
from langrl.learner.learner import _collate
from langrl.learner.losses import (
    cispo_policy_loss,
    entropy_from_logits,
    k3_kl,
    logprobs_from_logits,
    masked_mean,
    value_loss,
)
from langrl.policy_model import PolicyValueModel, token_logprobs

BF16 = torch.autocast(device_type="cpu", dtype=torch.bfloat16)


def _ids(vocab: int, shape: tuple[int, int] = (2, 9)) -> torch.Tensor:
    return torch.randint(3, vocab, shape, generator=torch.Generator().manual_seed(1))


# --- point 1: float32 output layer under bf16 autocast ------------------------------------------


def test_forward_logits_are_an_fp32_head_on_the_hidden_states_under_bf16(tiny_policy):
    model = PolicyValueModel.from_pretrained(tiny_policy)
    weight = model.lm.get_output_embeddings().weight  # float32 master weight
    ids = _ids(weight.shape[0])
    with torch.no_grad(), BF16:
        logits, _ = model(ids)  # (B, T, V)
        hidden = model.hidden_states(ids)  # (B, T, H)
        bf16_logits = model.lm(input_ids=ids, use_cache=False).logits  # the LM's own head
    assert logits.dtype == torch.float32
    expected = nn.functional.linear(hidden.float(), weight)  # fp32 head, outside autocast
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-6)
    # The LM's own head under autocast rounds to bf16: what upcasting afterwards cannot undo.
    assert bf16_logits.dtype == torch.bfloat16
    assert (bf16_logits.float() - expected).abs().max() > 1e-4


def test_learner_logprobs_use_the_fp32_head_under_bf16(tiny_policy):
    model = PolicyValueModel.from_pretrained(tiny_policy)
    weight = model.lm.get_output_embeddings().weight
    ids = _ids(weight.shape[0])
    with torch.no_grad(), BF16:
        hidden = model.hidden_states(ids)[:, :-1].reshape(-1, weight.shape[1])  # (N, H)
        targets = ids[:, 1:].reshape(-1)  # (N,)
        logp, entropy = token_logprobs(model.lm, hidden, targets, temperature=0.7, chunk_size=5)
    assert logp.dtype == entropy.dtype == torch.float32
    fp32_logits = nn.functional.linear(hidden.float(), weight)  # (N, V)
    expected = torch.log_softmax(fp32_logits / 0.7, -1).gather(-1, targets[:, None])[:, 0]
    torch.testing.assert_close(logp, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(entropy, entropy_from_logits(fp32_logits, 0.7), rtol=0, atol=1e-6)


def test_bf16_learner_step_runs_with_the_reference_model(tiny_policy):
    learner = Learner(tiny_policy, LearnerConfig(dtype="bfloat16", c_kl=0.05))
    metrics = learner.step(make_batch(3))
    assert learner.global_step == 1
    assert metrics["train/kl"] == 0.0  # same weights, same fp32 head: exactly the reference


# --- point 2: trained positions only, in chunks -------------------------------------------------


def _full_vocab_backward(learner: Learner, mb) -> tuple[torch.Tensor, torch.Tensor]:
    """The learner's loss as it was computed before chunking: full-vocabulary logits at every
    position, from the models' forward passes; backward. Returns (total, entropy sum)."""
    cfg, mask, temp = learner.config, mb.completion_mask, mb.temperature
    if isinstance(temp, torch.Tensor):
        temp = temp[:, None, None]  # (B, 1, 1): each row's own
    norm = int(mask.sum())
    with torch.no_grad():
        ref_logits = learner.ref_model(input_ids=mb.input_ids, attention_mask=mb.attention_mask)
        ref_logp = logprobs_from_logits(ref_logits.logits[:, :-1], mb.targets, temp)  # (B, T-1)
    logits, values = learner.model(mb.input_ids, mb.attention_mask)  # (B, T, V), (B, T)
    logp = logprobs_from_logits(logits[:, :-1], mb.targets, temp)  # (B, T-1)
    values = values[:, :-1].float()  # (B, T-1)
    advantages = torch.where(mb.has_advantages, mb.advantages, mb.returns - values.detach())
    policy, _ = cispo_policy_loss(
        logp, mb.old_logprobs, advantages, mask, eps_high=cfg.eps_high, normalizer=norm
    )
    value = value_loss(values, mb.returns, mask, normalizer=norm)
    kl = masked_mean(k3_kl(logp, ref_logp), mask, "token", norm)
    total = cfg.c_policy * policy + cfg.c_value * value + cfg.c_kl * kl
    total.backward()
    entropy = entropy_from_logits(logits[:, :-1].detach(), temp)  # (B, T-1)
    return total.detach(), torch.where(mask, entropy, 0.0).sum()


def _grads(learner: Learner) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in learner.model.named_parameters() if p.grad is not None}
    learner.optimizer.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("chunk_size", [1, 4, None])
def test_chunked_logprobs_give_the_full_vocabulary_loss_and_gradient(tiny_policy, chunk_size):
    learner = Learner(tiny_policy, LearnerConfig(c_kl=0.05))
    with torch.no_grad():  # move the policy off the reference so the KL term has a gradient
        g = torch.Generator().manual_seed(3)
        for p in learner.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    # Each trajectory sampled at its own temperature; one with its own advantages (the rest
    # use reward - V_old).
    batch = [
        dataclasses.replace(t, temperature=temp)
        for t, temp in zip(make_batch(4), [0.8, 1.3, 0.8, 0.5], strict=True)
    ]
    c2 = len(batch[2].completion_ids)
    batch[2] = dataclasses.replace(batch[2], advantages=[0.1 * i - 0.2 for i in range(c2)])
    mb = _collate(batch, pad_id=0)
    assert mb.temperature.tolist() == pytest.approx([0.8, 1.3, 0.8, 0.5])

    expected_total, expected_entropy = _full_vocab_backward(learner, mb)
    expected_grads = _grads(learner)
    learner.config.logits_chunk_size = chunk_size
    parts, _ = learner._forward_backward(mb, int(mb.completion_mask.sum()), value_only=False)
    grads = _grads(learner)

    torch.testing.assert_close(parts["loss/total"], expected_total, rtol=0, atol=1e-6)
    torch.testing.assert_close(parts["sum/entropy"], expected_entropy, rtol=0, atol=1e-5)
    assert parts["sum/kl"] > 0
    assert grads.keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=0, atol=1e-6, msg=name)


def test_one_shared_temperature_stays_one_number():
    # All rows at one temperature: the logits are divided by a number, exactly as when the
    # temperature was one learner setting (bit for bit on every device; CUDA divides by a
    # host scalar differently from by a tensor).
    mb = _collate([dataclasses.replace(t, temperature=0.8) for t in make_batch(3)], pad_id=0)
    assert mb.temperature == 0.8 and not isinstance(mb.temperature, torch.Tensor)


def test_chunks_bound_the_logits_kept_for_backward(tiny_policy):
    model = PolicyValueModel.from_pretrained(tiny_policy)
    vocab, width = model.lm.get_output_embeddings().weight.shape
    n, chunk = 24, 4
    hidden = torch.randn(n, width, requires_grad=True)  # (N, H)
    targets = torch.randint(0, vocab, (n,))  # (N,)
    biggest: dict[str | None, int] = {}
    for size in (None, chunk):
        saved: list[int] = []

        def pack(t: torch.Tensor, saved: list[int] = saved) -> torch.Tensor:
            saved.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            logp, _ = token_logprobs(model.lm, hidden, targets, chunk_size=size)
        logp.sum().backward()  # the recomputation during backward works
        biggest[size] = max(saved)
    assert biggest[None] >= n * vocab  # unchunked: all logits kept until backward
    assert biggest[chunk] < n * vocab / 2  # chunked: no logits kept, only inputs
