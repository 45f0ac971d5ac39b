"""The tiny default policy, built locally: tokenizer, Qwen2 model presets, warm start, cache."""

from langrl.tiny.model import PRESETS, TinyModelSpec, build_random_policy
from langrl.tiny.tokenizer import build_tokenizer, save_tokenizer
from langrl.tiny.warmstart import WarmStartConfig, build_policy, ensure_policy

__all__ = [
    "PRESETS",
    "TinyModelSpec",
    "WarmStartConfig",
    "build_policy",
    "build_random_policy",
    "build_tokenizer",
    "ensure_policy",
    "save_tokenizer",
]
