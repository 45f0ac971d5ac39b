"""Constants shared by the tests in ``tests/envs`` (a uniquely named module rather than
``conftest``, which other test folders also define)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import gymnasium as gym

import langrl  # noqa: F401  (registers the envs)

#: Every env langrl registers, found by looping over the registry (not a hand-kept list).
LANGRL_ENV_IDS = sorted(
    env_id
    for env_id, spec in gym.registry.items()
    if isinstance(spec.entry_point, str) and spec.entry_point.startswith("langrl.envs.")
)

COUNTDOWN_TASK = {"numbers": [3, 5, 7, 2], "target": 24}
GSM8K_TASK = {"question": "Tom has 3 boxes of 4 apples. How many apples?", "answer": "#### 12"}


T = TypeVar("T")


def python_work(fn: Callable[[], T]) -> tuple[T, int]:
    """``fn()``'s result and the work it did: Python lines executed plus functions called
    (Python and C), counted by the interpreter's trace and profile hooks.

    A bound on this count is what a test asserts instead of a bound on a clock: the same
    call does the same work on an idle and on a loaded machine, while a loop over a huge
    input, quadratic behaviour or deep recursion still shows up as thousands of extra
    events. (Time itself is measured in ``benchmarks/``.)"""
    work = 0

    def line(frame: Any, event: str, arg: Any) -> Any:
        nonlocal work
        if event == "line":
            work += 1
        return line

    def call(frame: Any, event: str, arg: Any) -> Any:
        return line  # trace each new frame line by line

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal work
        if event in ("call", "c_call"):
            work += 1

    old_trace, old_profile = sys.gettrace(), sys.getprofile()
    sys.settrace(call)
    sys.setprofile(profile)
    try:
        result = fn()
    finally:
        sys.setprofile(old_profile)
        sys.settrace(old_trace)
    return result, work
