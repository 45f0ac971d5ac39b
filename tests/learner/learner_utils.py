"""Helpers for the learner tests: tiny batches and an independent, unpadded logprob/value path.

The independent path runs one sequence at a time with no padding and indexes positions by
hand, so it checks the learner's batching, padding and shift conventions from outside.
"""

from __future__ import annotations

import torch

from langrl.policy_model import PolicyValueModel
from langrl.trajectory import Trajectory


def make_batch(
    n: int = 4,
    seed: int = 0,
    vocab: int = 100,
    rewards: list[float] | None = None,
    advantages: list[float] | None = None,
) -> list[Trajectory]:
    """``n`` trajectories of different prompt/completion lengths with random ids in [3, vocab).

    ``advantages`` (one scalar per trajectory) become constant per-token advantages.
    Behaviour logprobs are placeholders (-2.0); tests that need on-policy ones use
    ``with_behaviour_logprobs``.
    """
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        p_len, c_len = 3 + (i % 3), 4 + (2 * i) % 5
        prompt = torch.randint(3, vocab, (p_len,), generator=g).tolist()
        completion = torch.randint(3, vocab, (c_len,), generator=g).tolist()
        reward = rewards[i] if rewards is not None else (1.0 if i % 2 == 0 else -1.0)
        adv = None if advantages is None else [advantages[i]] * c_len
        out.append(Trajectory(prompt, completion, [-2.0] * c_len, reward, advantages=adv))
    return out


@torch.no_grad()
def completion_logprobs(
    model: PolicyValueModel, traj: Trajectory, temperature: float = 1.0
) -> list[float]:
    """log pi(completion token i | prefix) at ``temperature``, from an unpadded forward."""
    ids = torch.tensor([traj.prompt_ids + traj.completion_ids])  # (1, L)
    logits, _ = model(ids)  # (1, L, V)
    logp = torch.log_softmax(logits[0].float() / temperature, dim=-1)  # (L, V)
    p = len(traj.prompt_ids)
    return [logp[p - 1 + i, tok].item() for i, tok in enumerate(traj.completion_ids)]


@torch.no_grad()
def completion_values(model: PolicyValueModel, traj: Trajectory) -> list[float]:
    """V(s_t) for each completion token: the value head at the position before it."""
    ids = torch.tensor([traj.prompt_ids + traj.completion_ids])  # (1, L)
    _, values = model(ids)  # (1, L)
    p = len(traj.prompt_ids)
    return [values[0, p - 1 + i].item() for i in range(len(traj.completion_ids))]


def with_behaviour_logprobs(
    model: PolicyValueModel, batch: list[Trajectory], temperature: float = 1.0, shift: float = 0.0
) -> list[Trajectory]:
    """Copies of ``batch`` sampled at ``temperature``: their behaviour logprobs are the
    model's own at that temperature (+ ``shift``), and they carry it."""
    out = []
    for t in batch:
        lp = [x + shift for x in completion_logprobs(model, t, temperature)]
        out.append(
            Trajectory(
                t.prompt_ids,
                t.completion_ids,
                lp,
                t.reward,
                advantages=t.advantages,
                temperature=temperature,
                policy_version=t.policy_version,
            )
        )
    return out


def weighted_logprob_objective(model: PolicyValueModel, batch: list[Trajectory]) -> float:
    """sum_i sum_t A_i log pi(a_t): what a policy-gradient step should raise."""
    total = 0.0
    for t in batch:
        assert t.advantages is not None
        lp = completion_logprobs(model, t)
        total += sum(a * x for a, x in zip(t.advantages, lp, strict=True))
    return total
