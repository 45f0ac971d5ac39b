"""``langrl.engine.malloc``: a push's large allocations are mmapped, generation's are not.

Run in a subprocess: the thresholds are process-wide and would outlive the test here.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from langrl.engine import malloc

pytestmark = pytest.mark.skipif(not malloc.available(), reason="needs glibc's mallopt")

# Where does a block of some MiB land: in the [heap] mapping or elsewhere (an mmap)? glibc
# mmaps a block only when the heap cannot serve it from free space, and the test's own
# Python allocations pin each freed block as a hole, so every block is larger than all
# before it. Before any push (glibc's default: mmapped, above its first threshold of 128
# KiB), with the serving threshold (32 MiB: the heap grows instead), inside a push (mmapped
# again: above 64 KiB), after it (the heap), and after a push block that raised (restored).
_CHILD = r"""
import ctypes, json
from langrl.engine import malloc

def heap_range():
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            lo, hi = line.split()[0].split("-")
            return int(lo, 16), int(hi, 16)
    return 0, 0

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def on_heap(mib):
    nbytes = mib << 20
    p = libc.malloc(nbytes)
    lo, hi = heap_range()
    inside = lo <= p < hi
    libc.free(p)
    return inside

out = {"default": on_heap(1)}
malloc.set_mmap_threshold(malloc.SERVE_MMAP_THRESHOLD)
out["serving"] = on_heap(2)
with malloc.push_allocations():
    out["push"] = on_heap(3)
out["after_push"] = on_heap(4)
try:
    with malloc.push_allocations():
        raise RuntimeError
except RuntimeError:
    pass
out["after_error"] = on_heap(5)
print(json.dumps(out))
"""


def test_push_allocations_are_mmapped_and_serving_allocations_are_not():
    result = subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=60, check=True
    )
    placed = json.loads(result.stdout.strip().splitlines()[-1])
    assert placed == {
        "default": False,
        "serving": True,
        "push": False,
        "after_push": True,
        "after_error": True,
    }
