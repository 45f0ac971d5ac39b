"""Fixtures for the learner tests: one tiny random policy per session (about 0.1 s to build)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from langrl.tiny.model import build_random_policy


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2 policy with tied embeddings and a zero-initialised value head."""
    return build_random_policy(tmp_path_factory.mktemp("tiny_policy"), preset="test", seed=0)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run the tiny model on one intra-op thread, restored afterwards.

    Measured here: on the 2-core machines with other processes busy, two OpenMP threads made
    this folder about 10x slower (92 s vs 8.5 s); matrices this small gain nothing from them.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
