"""Fixtures of the end-to-end tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def engine(vllm_engine, preserve_weights):
    """The session's real vLLM engine, its initial weights pushed back after the test."""
    preserve_weights(vllm_engine)
    return vllm_engine
