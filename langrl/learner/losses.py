"""The learner's losses: short pure functions on tensors, each checkable against its paper.

All per-token tensors share one layout, ``(B, T)``, with a boolean ``mask`` of the same shape
marking which entries count (padding and prompt positions are False). Masked-out entries are
selected away with ``torch.where``, never multiplied by 0, so an inf there cannot turn the
reduced value into NaN (the learner still fills them with finite placeholders, because a
non-finite value upstream of ``where`` can still poison the backward pass).

References:
- CISPO: MiniMax-M1 technical report (MiniMax, 2025), eq. (4): the importance-sampling weight
  is clipped and stop-gradiented, and multiplies a REINFORCE term, so no token's gradient is
  dropped.
- k3 KL estimator: J. Schulman, "Approximating KL Divergence" (2020), also GRPO's (DeepSeekMath,
  Shao et al. 2024, eq. 4).
- Normalisation: DAPO's token-level mean vs. GRPO's per-sequence mean.

``logprobs_from_logits`` and ``entropy_from_logits`` live with the model
(``langrl.policy_model``, whose ``token_logprobs`` the engine shares) and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from langrl.policy_model import entropy_from_logits, logprobs_from_logits

__all__ = [
    "POLICY_LOSSES",
    "cispo_policy_loss",
    "entropy_from_logits",
    "k3_kl",
    "logprobs_from_logits",
    "masked_mean",
    "value_loss",
]

Diagnostics = dict[str, torch.Tensor]
PolicyLossFn = Callable[..., tuple[torch.Tensor, Diagnostics]]


def masked_mean(
    values: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token",
    normalizer: float | None = None,
) -> torch.Tensor:
    """Reduce per-token ``values`` (B, T) over ``mask`` (B, T) to a scalar.

    - ``"token"``: ``sum_{b,t} m*v / sum_{b,t} m`` (DAPO; TRL ``loss_type="dapo"``).
    - ``"sequence"``: ``mean_b [ sum_t m*v / sum_t m ]`` over sequences with at least one
      masked-in token (GRPO).

    ``normalizer`` replaces the denominator (token count, or sequence count) when ``values`` is
    one micro-batch of a larger batch: pass the WHOLE batch's count and the micro-batch results
    sum to the full-batch mean, so gradient accumulation is exact. Empty masks give 0.
    """
    mask = mask.bool()
    picked = torch.where(mask, values, torch.zeros_like(values))  # (B, T)
    if mode == "token":
        denom = normalizer if normalizer is not None else mask.sum().clamp(min=1)
        return picked.sum() / denom
    if mode == "sequence":
        per_seq = picked.sum(-1) / mask.sum(-1).clamp(min=1)  # (B,)
        denom = normalizer if normalizer is not None else mask.any(-1).sum().clamp(min=1)
        return per_seq.sum() / denom
    raise ValueError(f"unknown normalisation mode {mode!r}; use 'token' or 'sequence'")


def _token_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Plain token mean for diagnostics (detached; independent of the loss normalisation)."""
    return masked_mean(values.detach().float(), mask, "token")


def cispo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_high: float = 5.0,
    normalization: str = "token",
    normalizer: float | None = None,
) -> tuple[torch.Tensor, Diagnostics]:
    """CISPO (MiniMax-M1, eq. 4): ``L = -mean[ sg(min(r_t, eps_high)) * A_t * log pi(a_t) ]``.

    ``r_t = exp(log pi(a_t) - log mu(a_t))`` is the importance ratio against the behaviour
    policy ``mu``. All tensors (B, T). Unlike PPO's clipped surrogate, the weight is capped,
    not the update, so every token keeps a gradient. Diagnostics: ``clip_frac`` (fraction of tokens with r_t > eps_high,
    i.e. where the cap is active) and ``ratio_mean``.
    """
    ratio = torch.exp(logprobs - old_logprobs)  # (B, T)
    weight = torch.clamp(ratio, max=eps_high).detach()  # (B, T); sg(min(r, eps_high))
    per_token = -weight * advantages * logprobs  # (B, T)
    loss = masked_mean(per_token, mask, normalization, normalizer)
    diagnostics = {
        "clip_frac": _token_mean((ratio > eps_high).float(), mask),
        "ratio_mean": _token_mean(ratio, mask),
    }
    return loss, diagnostics


#: Policy losses by ``LearnerConfig.policy_loss`` name; hyperparameters come from
#: ``LearnerConfig.policy_loss_kwargs()``. A new objective is a function with
#: ``cispo_policy_loss``'s signature, an entry here, its name in
#: ``langrl.learner.config.POLICY_LOSS_NAMES`` and its keyword arguments in
#: ``policy_loss_kwargs``.
POLICY_LOSSES: dict[str, PolicyLossFn] = {
    "cispo": cispo_policy_loss,
}


def value_loss(
    values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    normalization: str = "token",
    normalizer: float | None = None,
) -> torch.Tensor:
    """Masked MSE ``mean[ (V(s_t) - R)^2 ]`` (the paper's value loss; no 1/2 factor).

    ``values`` and ``returns`` (B, T); the target is the episode reward at every completion
    token (Monte-Carlo return, no bootstrapping, no GAE).
    """
    return masked_mean((values - returns) ** 2, mask, normalization, normalizer)


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of ``KL(pi || pi_ref)`` for tokens sampled from ``pi``.

    ``k3 = exp(ref - logp) - (ref - logp) - 1`` (Schulman 2020; GRPO eq. 4): unbiased, always
    >= 0, exactly 0 where the two policies agree. Tensors (B, T) -> (B, T).
    """
    log_ratio = ref_logprobs - logprobs  # (B, T)
    return torch.exp(log_ratio) - log_ratio - 1  # (B, T)
