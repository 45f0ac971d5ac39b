"""Is CISPO learner-bound on the reproduction preset? Engine and learner time, by placement.

Runs ``configs/reproduce.yaml``'s CISPO (async, as the preset trains it) for ``--steps``
gradient steps, once per ``--variants`` entry (alternated over ``--repeats``), each in a
fresh subprocess with its own vLLM engine, and reports over the steps after ``--warmup``:

- samples/s and generated tokens/s (the run's own counters over its training wall time);
- per step: ``perf/update_s`` (the learner), ``perf/wait_s`` (the loop waiting for rollouts:
  near 0 means the learner is the bound, the engine idles while it trains) and
  ``perf/sync_s`` (weight pushes);
- each process's share of a core over those steps (trainer, vLLM's EngineCore and worker).

The variants (``VARIANTS``): ``default`` (the preset as it is), ``1-thread`` (the learner on
one torch thread, ``learner.num_threads 1``), ``engine-actor`` (``cluster.address local``:
the engine as one Ray replica, so vLLM's frontend runs in the replica's process instead of
the trainer's). Evaluation is cut to one problem (the final one cannot be switched off; it
is not timed).

    nice -n 19 .venv/bin/python benchmarks/bench_train_balance.py
    nice -n 19 .venv/bin/python benchmarks/bench_train_balance.py --variants default engine-actor

Measured 2026-12-03 (2 cores, ``--steps 40 --warmup 8 --repeats 2``): 2 threads 40.8
samples/s, update 1.55 s, wait 1.18 s per step, CPU worker 80% + trainer 48% + EngineCore 34%
of a core; 1 thread 33.8 samples/s (0.83x). Neither side waits on the other alone (wait_s
> 0 and the update at 3x its 0.5 s alone, ``bench_learner.py``), and the cores are not full
(162% of 200%): the trainer's learner thread shares its process, and its GIL, with the
vLLM frontend and the agent's grading on the engine loop.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from proc_cpu import CpuMeter, format_shares

ROOT = Path(__file__).resolve().parent.parent
PRESET = ROOT / "configs" / "reproduce.yaml"
#: Variant name -> config overrides on top of the preset's CISPO.
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "1-thread": {"learner.num_threads": 1},
    "engine-actor": {"cluster.address": "local"},
}


def child(spec_path: str, out_path: str) -> None:
    """One run: the loop unchanged, the CPU meter over the steps after the warm-up."""
    from run_scalars import read_scalars

    from langrl.training import load_config
    from langrl.training.run import TrainingRun

    spec = json.loads(Path(spec_path).read_text())
    warmup, steps = spec.pop("warmup"), spec["total_steps"]
    config = load_config(str(PRESET), spec, agent="cispo")
    meter, result = CpuMeter(), {}

    class MeteredRun(TrainingRun):
        def _log(self, *args: Any, **kwargs: Any) -> None:
            super()._log(*args, **kwargs)
            if self.step == warmup:
                meter.start()
            elif self.step == steps:
                result["cpu"], result["wall_s"] = meter.stop(), meter.wall_s

    run = MeteredRun(config)
    try:
        run.run()
    finally:
        run.close()

    scalars = read_scalars(config.run_dir)

    timed = lambda s: {k: v for k, v in s.items() if warmup < k <= steps}  # noqa: E731
    samples, tokens = scalars["perf/gen_samples_total"], scalars["perf/gen_tokens_total"]
    wall = scalars["perf/train_wall_s"]
    result.update(
        update_s=list(timed(scalars["perf/update_s"]).values()),
        wait_s=list(timed(scalars["perf/wait_s"]).values()),
        sync_s=list(timed(scalars["perf/sync_s"]).values()),
        samples=samples[steps] - samples[warmup],
        tokens=tokens[steps] - tokens[warmup],
        train_wall_s=wall[steps] - wall[warmup],
    )
    Path(out_path).write_text(json.dumps(result))


def run_one(variant: str, args: argparse.Namespace, work: Path, tag: str) -> dict[str, Any]:
    spec = {
        "total_steps": args.steps,
        "warmup": args.warmup,
        "max_gen_tokens": None,
        "eval_every_tokens": None,
        "eval_every": 0,
        "checkpoint_every": 0,
        "progress": False,
        "log_every": 1,
        "run_dir": str(work / f"{tag}.run"),
        "eval.num_problems": 1,
        "eval.k": 1,
        **VARIANTS[variant],
    }
    spec_path, out_path, log_path = (work / f"{tag}.{ext}" for ext in ("spec", "out", "log"))
    spec_path.write_text(json.dumps(spec))
    command = [sys.executable, __file__, "--child", str(spec_path), str(out_path)]
    with open(log_path, "w") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    if code != 0 or not out_path.exists():
        tail = "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-30:])
        raise SystemExit(f"{tag} failed (exit {code}); the end of {log_path}:\n{tail}")
    return json.loads(out_path.read_text())


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["default"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    results: dict[str, list[dict[str, Any]]] = {v: [] for v in args.variants}
    with tempfile.TemporaryDirectory(prefix="bench-balance-") as tmp:
        for repeat in range(args.repeats):
            for variant in args.variants:
                print(f"run: {variant}, repeat {repeat + 1}", flush=True)
                results[variant].append(run_one(variant, args, Path(tmp), f"{variant}.{repeat}"))

    print(f"\nreproduce.yaml cispo (async), steps {args.warmup + 1}..{args.steps}")
    print(
        f"{'variant':>12}{'steps/s':>8}{'samples/s':>10}{'tok/s':>8}{'update s':>9}{'wait s':>8}{'sync s':>8}"
        "  CPU (share of one core)"
    )
    speed, steps = {}, {}
    for variant, runs in results.items():
        wall = sum(r["train_wall_s"] for r in runs)
        speed[variant] = sum(r["samples"] for r in runs) / wall
        steps[variant] = len(runs) * (args.steps - args.warmup) / wall

        def mean(key: str, runs: list[dict[str, Any]] = runs) -> float:
            return statistics.fmean(x for r in runs for x in r[key])

        cpu: dict[str, float] = {}
        for r in runs:
            for name, seconds in r["cpu"].items():
                cpu[name] = cpu.get(name, 0.0) + seconds
        shares = format_shares(cpu, sum(r["wall_s"] for r in runs))
        print(
            f"{variant:>12}{steps[variant]:>8.2f}{speed[variant]:>10.1f}{sum(r['tokens'] for r in runs) / wall:>8.0f}"
            f"{mean('update_s'):>9.2f}{mean('wait_s'):>8.2f}{mean('sync_s'):>8.2f}  {shares}"
        )
    base = args.variants[0]
    for variant in args.variants[1:]:
        print(
            f"{variant} / {base}: steps/s {steps[variant] / steps[base]:.2f}x, "
            f"generated samples/s {speed[variant] / speed[base]:.2f}x"
        )


if __name__ == "__main__":
    main()
