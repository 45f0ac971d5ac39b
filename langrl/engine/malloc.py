"""Keep weight pushes out of the vLLM worker's malloc heap (glibc only; a no-op elsewhere).

A push replaces every weight: vLLM's CPU backend restores, loads and repacks each linear
layer, so each push frees the old weight buffers and allocates new ones. Under glibc's
default, buffers of these sizes (hundreds of KB to a few MB) come from the main heap, where
they land between the generation steps' short-lived temporaries of similar sizes. The heap
can then only grow: a freed weight's hole is split by temporaries, and the next push's
weights go above them. ``benchmarks/bench_engine_memory.py both`` showed it: pushes alone
and generation alone level off, the two in turn grew the worker's ``[heap]`` without end
(about 7 MB a minute in a CISPO soak).

``push_allocations()`` (or ``begin_push``/``end_push``) wraps the worker's side of a push: inside it, allocations from 64 KiB
up are served by ``mmap`` and so go back to the system whole when freed, away from the
heap; on leaving, the threshold returns to ``SERVE_MMAP_THRESHOLD``, so generation allocates
as before (a threshold that low all the time cost 14% of generated tokens/s), and
``malloc_trim`` returns the heap's free top. Stdlib only: it runs inside vLLM's worker.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
from collections.abc import Iterator

logger = logging.getLogger(__name__)

#: ``mallopt`` parameter number of glibc's mmap threshold (malloc.h: ``M_MMAP_THRESHOLD``).
_M_MMAP_THRESHOLD = -3

#: During a push: allocations from this size up are mmapped (a weight is never smaller than
#: a few tens of KB for a model worth serving; norms and biases stay on the heap, tiny).
PUSH_MMAP_THRESHOLD = 64 << 10

#: Between pushes: glibc's own ceiling for its dynamic threshold (32 MiB on 64-bit), so
#: generation's temporaries stay on the heap as they did before any push. Setting a value
#: at all fixes the threshold (glibc stops adjusting it), hence the ceiling.
SERVE_MMAP_THRESHOLD = 32 << 20


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt  # noqa: B018  (glibc only: musl has none)
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def available() -> bool:
    """True where glibc's ``mallopt`` and ``malloc_trim`` exist (Linux with glibc)."""
    return _LIBC is not None


def set_mmap_threshold(nbytes: int) -> bool:
    """``mallopt(M_MMAP_THRESHOLD, nbytes)``; False if it is not available or refused."""
    return _LIBC is not None and bool(_LIBC.mallopt(_M_MMAP_THRESHOLD, int(nbytes)))


def begin_push() -> None:
    """Large allocations by ``mmap`` from now on (a weight push starts)."""
    set_mmap_threshold(PUSH_MMAP_THRESHOLD)


def end_push() -> None:
    """The serving threshold again, and the heap's free top back to the system."""
    if _LIBC is not None:
        set_mmap_threshold(SERVE_MMAP_THRESHOLD)
        _LIBC.malloc_trim(0)


@contextlib.contextmanager
def push_allocations() -> Iterator[None]:
    """``begin_push`` ... ``end_push`` around the block, however it ends."""
    begin_push()
    try:
        yield
    finally:
        end_push()
