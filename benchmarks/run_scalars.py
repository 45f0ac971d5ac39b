"""A finished run's TensorBoard scalars, for the benchmarks that run ``TrainingRun`` itself
(``bench_vs_trl.py``, ``bench_train_balance.py``). Shared by them; not a benchmark."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def read_scalars(run_dir: str | Path) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` of every scalar the run under ``run_dir`` logged."""
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}
