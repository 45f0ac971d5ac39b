"""Where the CPU went: CPU seconds per process of this process's tree, by process name.

Shared by the benchmarks (not a benchmark itself). ``CpuMeter`` reads ``utime + stime`` of
this process and of every process below it from ``/proc`` (Linux only) at ``start()`` and at
``stop()``, so vLLM's EngineCore and worker, Ray actors and the trainer are seen apart:

    meter = CpuMeter().start()
    ...  # the measured work
    shares = meter.stop()  # {"trainer": 41.2, "VLLM::EngineCor": 20.3, "VLLM::Worker": 35.0}

A child that exits between the two readings loses the time since ``start`` (``/proc`` keeps
no record of it), so measure while the engine runs. Reported as seconds and, with
``format_shares``, as a share of one core over the wall time (100% = one core busy).
"""

from __future__ import annotations

import os
import time

TRAINER = "trainer"
_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, str, float] | None:
    """(parent pid, name, CPU seconds) of ``pid``; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    name = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    return int(fields[1]), name, (int(fields[11]) + int(fields[12])) / _TICKS


def tree_cpu(root: int) -> dict[int, tuple[str, float]]:
    """``{pid: (name, CPU seconds)}`` for ``root`` and every process below it."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                stats[int(entry)] = stat
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            out[pid] = (stats[pid][1], stats[pid][2])
            todo.extend(children.get(pid, []))
    return out


class CpuMeter:
    """CPU seconds spent by each process name of a tree between ``start`` and ``stop``.

    Args:
        root: The tree's root (default: this process, reported as ``"trainer"``).
    """

    def __init__(self, root: int | None = None) -> None:
        self.root = root if root is not None else os.getpid()
        self._before: dict[int, tuple[str, float]] = {}
        self._t0 = 0.0
        self.wall_s = 0.0

    def start(self) -> CpuMeter:
        self._before = tree_cpu(self.root)
        self._t0 = time.perf_counter()
        return self

    def stop(self) -> dict[str, float]:
        """CPU seconds per process name since ``start`` (processes of one name summed)."""
        after = tree_cpu(self.root)
        self.wall_s = time.perf_counter() - self._t0
        out: dict[str, float] = {}
        for pid, (name, cpu) in after.items():
            label = TRAINER if pid == self.root else name
            spent = cpu - self._before.get(pid, (name, 0.0))[1]
            out[label] = out.get(label, 0.0) + spent
        return out


def format_shares(shares: dict[str, float], wall_s: float, min_share: float = 0.02) -> str:
    """``"trainer 65%, VLLM::Worker 74%"``: each name's CPU as a share of one core, busiest
    first; names under ``min_share`` of a core are left out."""
    wall = max(wall_s, 1e-9)
    parts = [
        f"{name} {100 * cpu / wall:.0f}%"
        for name, cpu in sorted(shares.items(), key=lambda kv: -kv[1])
        if cpu / wall >= min_share
    ]
    return ", ".join(parts) if parts else "-"
