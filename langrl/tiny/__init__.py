"""The tiny default policy, built locally: tokenizer, Qwen2 model presets, warm start, cache
(the default policy also ships built, in ``shipped-policies/``); and a byte-level BPE
tokenizer with merges (``build_bpe_tokenizer``) for real-BPE tests."""

from langrl.tiny.bpe_tokenizer import build_bpe_tokenizer
from langrl.tiny.model import PRESETS, TinyModelSpec, build_random_policy
from langrl.tiny.tokenizer import build_tokenizer, save_tokenizer
from langrl.tiny.warmstart import WarmStartConfig, build_policy, ensure_policy

__all__ = [
    "PRESETS",
    "TinyModelSpec",
    "WarmStartConfig",
    "build_bpe_tokenizer",
    "build_policy",
    "build_random_policy",
    "build_tokenizer",
    "ensure_policy",
    "save_tokenizer",
]
