"""SIGTERM takes the Ctrl-C path (checkpoint, engine shutdown) in the CLIs."""

from __future__ import annotations

import os
import signal

import pytest

from langrl.signals import interrupt_on_sigterm


def test_sigterm_raises_keyboard_interrupt_so_finally_blocks_run():
    previous = signal.getsignal(signal.SIGTERM)
    cleaned = []
    try:
        interrupt_on_sigterm()
        with pytest.raises(KeyboardInterrupt):
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                signal.sigtimedwait([], 0.5)  # let the handler run if delivery is deferred
            finally:
                cleaned.append(True)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert cleaned == [True]
