"""langrl's vLLM plugin: how long vLLM's processes spin while they wait for each other.

vLLM runs its scheduler (``EngineCore``) and the model (``Worker``) in separate processes
that talk through shared-memory queues. A reader of such a queue busy-waits
(``os.sched_yield`` in a loop) for ``busy_loop_s`` seconds after each message before it
sleeps on a socket; vLLM's default is 1 s, so during generation the scheduler spins for the
whole time the worker computes. With a GPU that costs a spare CPU core; on a CPU-only machine
the spin takes the cores the model and the trainer run on (``py-spy`` on a training run
here: 82% of the engine core's samples waiting on the worker, half of them in
``sched_yield``). ``EngineConfig.busy_loop_s`` sets it; the engine hands it to vLLM's
processes in ``BUSY_LOOP_ENV``, and this plugin, which vLLM loads in each of its processes
(entry point ``vllm.general_plugins`` in ``pyproject.toml``), applies it there.

Without the variable (any other vLLM user of the same environment) it changes nothing.
"""

from __future__ import annotations

import logging
import os

#: Environment variable that carries ``EngineConfig.busy_loop_s`` to vLLM's processes.
BUSY_LOOP_ENV = "LANGRL_VLLM_BUSY_LOOP_S"

logger = logging.getLogger(__name__)

_applied: float | None = None  # what configure_busy_loop set in this process


def applied_busy_loop_s() -> float | None:
    """The busy-loop seconds ``configure_busy_loop`` applied in this process (``None``:
    vLLM's own); vLLM's worker reports it through ``WeightSyncExtension``."""
    return _applied


def configure_busy_loop() -> None:
    """Make every shared-memory queue reader created in this process spin for
    ``$LANGRL_VLLM_BUSY_LOOP_S`` seconds instead of vLLM's default (a no-op without it, and
    with a vLLM whose queues are built otherwise). Safe to call more than once."""
    global _applied
    value = os.environ.get(BUSY_LOOP_ENV)
    if not value:
        return
    seconds = float(value)
    try:
        from vllm.distributed.device_communicators import shm_broadcast
    except ImportError:
        return
    spin = getattr(shm_broadcast, "SpinCondition", None)
    if spin is None:
        logger.warning("%s: this vLLM has no SpinCondition; its busy loop is left as is",
                       BUSY_LOOP_ENV)  # fmt: skip
        return
    original = getattr(spin, "_langrl_original_init", spin.__init__)

    def __init__(self, is_reader, context, notify_address, busy_loop_s: float = 1.0) -> None:
        original(self, is_reader, context, notify_address, busy_loop_s=seconds)

    spin._langrl_original_init = original
    spin.__init__ = __init__
    _applied = seconds
