"""Causal LM + value head: the one network the learner trains and the engine's values use.

The value head is an MLP then ``tanh`` on the LM's final hidden state (after the model's
final norm), applied per token, as in the tree-search-distillation paper. The engine's
``values()`` and the learner call the very same ``PolicyValueModel.forward``; the reference
code's search used a different function (it skipped a LayerNorm), which we do not repeat.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

# In a subfolder: vLLM loads every top-level *.safetensors file as LM weights.
VALUE_HEAD_DIR = "value_head"
VALUE_HEAD_FILE = f"{VALUE_HEAD_DIR}/value_head.safetensors"
VALUE_HEAD_CONFIG_FILE = f"{VALUE_HEAD_DIR}/config.json"


class ValueHead(nn.Module):
    """``tanh(W2 gelu(W1 h))``: per-token state value in [-1, 1].

    Args:
        hidden_size: Width of the LM's hidden states.
        inner_size: Width of the MLP (default ``hidden_size``).
        init_value: V(s) of every state at initialisation, in (-1, 1): ``W2 = 0`` and
            ``b2 = atanh(init_value)``. 0.0 (default) makes early advantages the raw reward;
            a typical reward (e.g. the initial policy's mean) makes them centred from step 0.
    """

    def __init__(
        self, hidden_size: int, inner_size: int | None = None, init_value: float = 0.0
    ) -> None:
        super().__init__()
        if not -1.0 < init_value < 1.0:
            raise ValueError(f"ValueHead: init_value must be in (-1, 1) (tanh), got {init_value}")
        inner = inner_size or hidden_size
        self.fc1 = nn.Linear(hidden_size, inner)
        self.fc2 = nn.Linear(inner, 1)
        # W2 = 0: every state starts at exactly V = init_value, whatever the hidden state.
        nn.init.zeros_(self.fc2.weight)
        nn.init.constant_(self.fc2.bias, math.atanh(init_value))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, T)
        return torch.tanh(self.fc2(nn.functional.gelu(self.fc1(hidden)))).squeeze(-1)


class PolicyValueModel(nn.Module):
    """A Hugging Face causal LM with a value head on its final hidden state.

    ``forward`` returns ``(logits, values)``: logits ``(B, T, V)`` as the LM computes them
    and values ``(B, T)`` where ``values[:, t]`` is V of the prefix ending at token t.
    """

    def __init__(self, lm: PreTrainedModel, value_head: ValueHead | None = None) -> None:
        super().__init__()
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
        value_init: float = 0.0,
    ) -> PolicyValueModel:
        """Load the LM with ``from_pretrained`` and the value head if ``path`` has one.

        A saved head wins; otherwise a new head starts at ``V = value_init`` everywhere (see
        ``ValueHead``) with ``fc1`` drawn from torch's global RNG.
        """
        lm = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).to(device)
        head = ValueHead(lm.config.hidden_size, init_value=value_init)
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
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        detach_trunk: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits (B, T, V), values (B, T))``: ``values_from_hidden`` on ``trunk``'s output.

        ``detach_trunk=True`` feeds the value head detached hidden states: the values (and so
        the value loss's gradient) are unchanged for the head, but nothing reaches the LM.
        """
        logits, hidden = self.trunk(input_ids, attention_mask)
        return logits, self.values_from_hidden(hidden.detach() if detach_trunk else hidden)

    def trunk(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The LM alone: ``(logits (B, T, V), final hidden states (B, T, H))``.

        The hidden states are those after the model's final norm, the value head's input.
        """
        out = self.lm(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=True,
            use_cache=False,
        )
        return out.logits, out.hidden_states[-1]  # (B, T, V), (B, T, H)

    def values_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """The value head on ``trunk``'s hidden states (B, T, H) -> float32 values (B, T)."""
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
        _, values = self(ids, mask)  # (B, T)
        last = torch.tensor([len(s) - 1 for s in states], device=device)
        return values[torch.arange(len(states), device=device), last].tolist()  # sync point
