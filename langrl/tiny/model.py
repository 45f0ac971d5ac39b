"""Tiny Qwen2-architecture policies built locally, so everything runs without a model hub.

``build_random_policy(path, preset)`` writes a tokenizer, a randomly initialised Qwen2 causal
LM and a value head to ``path``; both vLLM and transformers load the result by path. The
warm-started default policy (supervised on solver traces) is built by ``langrl.tiny.warmstart``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM

from langrl.policy_model import PolicyValueModel
from langrl.tiny.tokenizer import build_tokenizer


@dataclass(frozen=True)
class TinyModelSpec:
    """Architecture of a tiny Qwen2 policy.

    Attributes:
        hidden_size: Model width; ``hidden_size / num_heads`` is the head dim (keep it 64,
            a size every vLLM attention backend supports).
        num_layers: Transformer blocks.
        num_heads: Attention heads.
        intermediate_size: MLP width.
        max_position_embeddings: Longest context; Countdown episodes need about 200 tokens.
        num_kv_heads: Key/value heads; ``None`` = ``num_heads``, fewer = grouped-query
            attention (as Qwen2.5).
    """

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    num_kv_heads: int | None = None


PRESETS: dict[str, TinyModelSpec] = {
    # The default policy (about 3.4M parameters), warm-started in minutes on 2 CPU cores.
    "default": TinyModelSpec(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=704),
    # For tests: builds and loads in seconds.
    "test": TinyModelSpec(hidden_size=128, num_layers=2, num_heads=2, intermediate_size=256),
}


def build_random_policy(
    path: str | os.PathLike,
    preset: str | TinyModelSpec = "test",
    seed: int = 0,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> Path:
    """Write tokenizer + randomly initialised Qwen2 LM + value head to ``path``; return it.

    ``preset`` names one of ``PRESETS`` or is a ``TinyModelSpec``. ``tokenizer`` defaults to
    the tiny character-level one; pass another (e.g.
    ``langrl.tiny.bpe_tokenizer.build_bpe_tokenizer()``) to size the model's vocabulary to it.
    """
    if isinstance(preset, TinyModelSpec):
        spec = preset
    elif preset in PRESETS:
        spec = PRESETS[preset]
    else:
        raise ValueError(f"unknown tiny model preset {preset!r}; choose from {sorted(PRESETS)}")
    path = Path(path)
    tok = tokenizer if tokenizer is not None else build_tokenizer()
    tok.save_pretrained(str(path))
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads or spec.num_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    lm = Qwen2ForCausalLM(config)
    lm.generation_config.pad_token_id = tok.pad_token_id
    PolicyValueModel(lm).save_pretrained(path)
    return path
