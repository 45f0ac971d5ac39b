"""Causal LM + value head: the one network the learner trains and the engine's values use.

The value head is an MLP then ``tanh`` on the LM's final hidden state (after the model's
final norm), applied per token, as in the tree-search-distillation paper. The engine's
``values()`` and the learner call the very same ``PolicyValueModel.forward``; the reference
code's search used a different function (it skipped a LayerNorm), which we do not repeat.

``token_logprobs`` is the one logprob computation of both too: the learner's (its policy and
KL terms) and the engine's scoring (``completion_logprobs``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import AutoModelForCausalLM, PreTrainedModel

# In a subfolder: vLLM loads every top-level *.safetensors file as LM weights.
VALUE_HEAD_DIR = "value_head"
VALUE_HEAD_FILE = f"{VALUE_HEAD_DIR}/value_head.safetensors"
VALUE_HEAD_CONFIG_FILE = f"{VALUE_HEAD_DIR}/config.json"


def final_hidden_states(
    lm: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """A causal LM's final hidden states (B, T, H), after its final norm, without computing
    logits: the decoder stack (``lm.base_model``) alone. Equal to the causal LM's
    ``hidden_states[-1]``, and its logits are ``lm_head_fp32(lm, these)``."""
    out = lm.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state  # (B, T, H)


def lm_head_fp32(lm: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
    """The output projection of ``lm`` in float32: logits (..., V) from hidden (..., H).

    Runs outside any autocast region on the float32 hidden state with a float32 weight (as
    TRL's ``cast_lm_head_to_fp32``): under bf16 autocast the LM's own head would return bf16
    logits, and upcasting those afterwards cannot restore the logprob differences (about
    1e-2 at bf16's 8-bit mantissa) that importance ratios and the KL are made of. Only for
    heads that are a plain linear map (Qwen2, Llama, GPT-2, ...): ``check_plain_lm_head``.
    """
    head = lm.get_output_embeddings()
    bias = None if head.bias is None else head.bias.float()
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        return nn.functional.linear(hidden.float(), head.weight.float(), bias)  # (..., V)


def check_plain_lm_head(lm: PreTrainedModel) -> None:
    """Raise ``ValueError`` unless ``lm``'s logits are ``Linear(final hidden state)``, the
    form ``final_hidden_states`` + ``lm_head_fp32`` reproduce (no logit soft-capping or
    scaling, which some architectures, e.g. Gemma 2 or Cohere, apply after the head)."""
    head = lm.get_output_embeddings()
    if not isinstance(head, nn.Linear) or lm.base_model is lm:
        raise ValueError(
            f"{type(lm).__name__}: langrl needs a causal LM whose output layer is an nn.Linear "
            f"over a base model's last hidden state; got output layer {type(head).__name__}"
        )
    for name in ("final_logit_softcapping", "logit_scale"):
        if getattr(lm.config, name, None) not in (None, 1, 1.0):
            raise ValueError(
                f"{type(lm).__name__}: config.{name}={getattr(lm.config, name)} transforms "
                "the logits after the output layer, which lm_head_fp32 does not reproduce"
            )


def logprobs_from_logits(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float | torch.Tensor = 1.0
) -> torch.Tensor:
    """``log softmax(logits / temperature)[target]`` per position, in float32.

    ``logits`` (B, T, V), ``targets`` (B, T) -> (B, T). Dividing by the sampling temperature
    makes these comparable with the engine's behaviour logprobs (taken under the sampling
    distribution). ``temperature`` is a number or a tensor broadcastable to ``logits``
    (e.g. (B, T, 1): one per position).
    """
    scaled = logits.float() / temperature  # (B, T, V); upcast: ratios need fp32 precision
    picked = scaled.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T)
    return picked - torch.logsumexp(scaled, dim=-1)  # (B, T)


def entropy_from_logits(
    logits: torch.Tensor, temperature: float | torch.Tensor = 1.0
) -> torch.Tensor:
    """Entropy ``H = -sum_v p_v log p_v`` of ``softmax(logits / temperature)`` per position.

    ``logits`` (B, T, V) -> (B, T), float32. Computed as ``logsumexp(z) - sum_v p_v z_v``.
    ``temperature`` as in ``logprobs_from_logits``.
    """
    scaled = logits.float() / temperature  # (B, T, V)
    probs = torch.softmax(scaled, dim=-1)  # (B, T, V)
    return torch.logsumexp(scaled, dim=-1) - (probs * scaled).sum(-1)  # (B, T)


def token_logprobs(
    lm: PreTrainedModel,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    temperature: float | torch.Tensor = 1.0,
    chunk_size: int | None = None,
    with_entropy: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logprobs (N,), entropies (N,))`` of ``targets`` (N,) given final hidden states (N, H).

    ``temperature``: one number for all N positions, or a tensor (N,) with each position's
    own (e.g. the temperature of the trajectory it belongs to). The float32 output layer
    (``lm_head_fp32``) runs on ``chunk_size`` positions at a time,
    so at most ``chunk_size x V`` logits exist at once, forward AND backward: with autograd
    on, each chunk is checkpointed (its logits are recomputed during backward instead of
    kept), which costs one more output-layer matmul per position (none when all N fit in one
    chunk). ``None`` = one pass over
    all N positions, logits kept for backward (peak ``N x V``). The entropy (of
    ``softmax(logits / temperature)``) carries no gradient. Same maths as
    ``logprobs_from_logits`` / ``entropy_from_logits`` on full logits, chunked.
    ``with_entropy=False`` skips the entropy (zeros in its place; saves a softmax).
    """
    per_position = isinstance(temperature, torch.Tensor)

    def chunk(
        h: torch.Tensor, t: torch.Tensor, temp: float | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        scale = temp.unsqueeze(-1) if per_position else temp  # (n, 1) or a number
        logits = lm_head_fp32(lm, h)  # (n, V) float32
        with torch.no_grad():
            entropy = (
                entropy_from_logits(logits, scale)  # (n,)
                if with_entropy
                else logits.new_zeros(logits.shape[0])  # (n,): a scorer needs none
            )
        return logprobs_from_logits(logits, t, scale), entropy  # (n,), (n,)

    if chunk_size is None or hidden.shape[0] == 0:
        return chunk(hidden, targets, temperature)
    # Checkpoint only when there are several chunks: one chunk's logits peak the same either
    # way (kept, or recomputed during backward), and recomputing them costs a matmul.
    recompute = torch.is_grad_enabled() and hidden.shape[0] > chunk_size
    hs, ts = hidden.split(chunk_size), targets.split(chunk_size)
    temps = temperature.split(chunk_size) if per_position else [temperature] * len(hs)
    parts = [
        checkpoint(chunk, h, t, temp, use_reentrant=False) if recompute else chunk(h, t, temp)
        for h, t, temp in zip(hs, ts, temps, strict=True)
    ]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


class ValueHead(nn.Module):
    """``tanh(W2 gelu(W1 h))``: per-token state value in [-1, 1].

    A new head starts at ``V = 0`` for every state (``W2 = 0``, ``b2 = 0``), so early
    advantages ``A = r - V`` are the raw reward until the head has fitted a baseline.

    Args:
        hidden_size: Width of the LM's hidden states.
        inner_size: Width of the MLP (default ``hidden_size``).
    """

    def __init__(self, hidden_size: int, inner_size: int | None = None) -> None:
        super().__init__()
        inner = inner_size or hidden_size
        self.fc1 = nn.Linear(hidden_size, inner)
        self.fc2 = nn.Linear(inner, 1)
        # W2 = 0: every state starts at exactly V = tanh(0) = 0, whatever the hidden state.
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, T)
        return torch.tanh(self.fc2(nn.functional.gelu(self.fc1(hidden)))).squeeze(-1)


class PolicyValueModel(nn.Module):
    """A Hugging Face causal LM with a value head on its final hidden state.

    ``forward`` returns ``(logits, values)``: float32 logits ``(B, T, V)`` (the output layer
    runs in float32 even under autocast, ``lm_head_fp32``) and values ``(B, T)`` where ``values[:, t]`` is V of the prefix ending at token t.
    """

    def __init__(self, lm: PreTrainedModel, value_head: ValueHead | None = None) -> None:
        super().__init__()
        check_plain_lm_head(lm)
        self.lm = lm
        hidden = lm.config.hidden_size
        self.value_head = value_head if value_head is not None else ValueHead(hidden)
        self.value_head.to(device=lm.device, dtype=next(lm.parameters()).dtype)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        dtype: torch.dtype = torch.float32,
        device: str = "cpu",
    ) -> PolicyValueModel:
        """Load the LM with ``from_pretrained`` and the value head if ``path`` has one.

        A saved head wins; otherwise a new head starts at ``V = 0`` everywhere (see
        ``ValueHead``) with ``fc1`` drawn from torch's global RNG.
        """
        lm = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).to(device)
        head = ValueHead(lm.config.hidden_size)
        head_file = Path(path) / VALUE_HEAD_FILE
        if head_file.is_file():
            head.load_state_dict(load_file(str(head_file)))
        return cls(lm, head)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write the LM (safetensors, ``from_pretrained``-loadable) and the value head beside it."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.lm.save_pretrained(str(path), safe_serialization=True)
        (path / VALUE_HEAD_DIR).mkdir(exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.value_head.state_dict().items()}
        save_file(state, str(path / VALUE_HEAD_FILE))
        (path / VALUE_HEAD_CONFIG_FILE).write_text(
            json.dumps({"hidden_size": self.lm.config.hidden_size, "activation": "gelu-tanh"})
        )

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits (B, T, V) float32, values (B, T))``: ``lm_head_fp32`` and the value head
        on the final hidden states (see ``hidden_and_values``).

        Full-vocabulary logits at every position: fine for scoring short batches; the learner
        instead projects only the positions it trains on, in chunks.
        """
        hidden, values = self.hidden_and_values(input_ids, attention_mask)
        return lm_head_fp32(self.lm, hidden), values

    def hidden_and_values(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(final hidden states (B, T, H), values (B, T))`` without the output projection."""
        hidden = self.hidden_states(input_ids, attention_mask)  # (B, T, H)
        return hidden, self.values_from_hidden(hidden)

    def hidden_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The LM's final hidden states (B, T, H), after its final norm: the value head's and
        the output projection's input (``final_hidden_states``)."""
        return final_hidden_states(self.lm, input_ids, attention_mask)

    def values_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """The value head on final hidden states (B, T, H) -> float32 values (B, T)."""
        return self.value_head(hidden.to(self.value_head.fc1.weight.dtype)).float()  # (B, T)

    def right_pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)`` of right-padded ``seqs`` on the model's device."""
        device = next(self.parameters()).device
        width = max(len(s) for s in seqs)
        pad = self.lm.config.pad_token_id or 0
        ids = torch.full((len(seqs), width), pad, dtype=torch.long, device=device)  # (B, T)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
        return ids, mask

    @torch.no_grad()
    def state_values(self, states: list[list[int]]) -> list[float]:
        """V(s) for each state = value at its last token. Right-pads; one batched forward."""
        if not states:
            return []
        ids, mask = self.right_pad(states)
        device = ids.device
        _, values = self.hidden_and_values(ids, mask)  # (B, T); no vocabulary projection
        last = torch.tensor([len(s) - 1 for s in states], device=device)
        return values[torch.arange(len(states), device=device), last].tolist()  # sync point
