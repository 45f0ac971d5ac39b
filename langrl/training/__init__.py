"""The training app: the run configuration, the training loop and its planner and state.

``langrl.training.config`` is pure (no torch, transformers or vLLM import) so that a bad
config is refused at once; ``train``, ``TrainingRun`` and the rest load lazily.

    from langrl.training import load_config, train
    train(load_config("configs/tiny_cpu.yaml", ["--total_steps", "4"], agent="cispo"))
"""

from __future__ import annotations

from typing import Any

from langrl.training.config import ConfigError, TrainConfig, load_config, parse_config

__all__ = ["ConfigError", "TrainConfig", "TrainingRun", "load_config", "parse_config", "train"]


def __getattr__(name: str) -> Any:
    # The loop imports torch and the learner: only when asked for.
    if name in ("train", "TrainingRun"):
        from langrl.training import run

        return getattr(run, name)
    raise AttributeError(f"module 'langrl.training' has no attribute {name!r}")
