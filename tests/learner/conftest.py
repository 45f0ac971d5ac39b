"""Fixtures for the learner tests: one tiny random policy per session (about 0.1 s to build)."""

from __future__ import annotations

from pathlib import Path

import pytest

from langrl.tiny.model import build_random_policy


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2 policy with tied embeddings and a zero-initialised value head."""
    return build_random_policy(tmp_path_factory.mktemp("tiny_policy"), preset="test", seed=0)
