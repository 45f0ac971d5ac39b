"""MCTS search cost with and without the value head's forward pass per expansion.

``MCTSConfig.value_head=False`` (the reproduce preset's MCTS, whose head is not trained)
backs up ``first_play_value`` instead of calling ``PolicyEngine.values``, a forward pass of
the transformers copy that runs beside vLLM on the same CPU cores. This runs the same
searches (``configs/reproduce.yaml``'s MCTS settings, the same seeds, the same train problems) both
ways through one vLLM engine on the tiny default policy, alternating the two settings
``--repeats`` times, and prints wall time, generated tokens per second and correct trees;
the ratio row compares the two in this same run.

    python benchmarks/bench_mcts_value_head.py                 # 32 problems, 3 repeats
    python benchmarks/bench_mcts_value_head.py --problems 64 --repeats 2
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from langrl.agents.mcts import MCTSAgent
from langrl.config import load_config
from langrl.engine import EngineConfig, create_engine
from langrl.tiny import ensure_policy

#: The preset whose MCTS searches are measured (its ``mcts`` section, merged per agent).
PRESET = Path(__file__).resolve().parent.parent / "configs" / "reproduce.yaml"


def run_once(engine, preset, value_head: bool, tasks: list[dict], seed: int) -> dict[str, float]:
    agent = MCTSAgent(
        replace(preset.agent_config, value_head=value_head, seed=seed),
        preset.env_id,
        preset.env_kwargs,
        engine.engine,  # the async engine: collect() runs on the engine's loop
    )
    start = time.perf_counter()
    batch = engine.run(agent.collect(tasks))
    wall = time.perf_counter() - start
    tokens = batch.metrics["gen/tokens"]
    return {
        "wall_s": wall,
        "tokens": tokens,
        "tok_per_s": tokens / wall,
        "correct": batch.metrics.get("train/correct_frac", 0.0) * len(tasks),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=32, help="train problems searched")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each setting")
    parser.add_argument("--model", help="policy directory (default: the tiny default policy)")
    args = parser.parse_args()

    preset = load_config(PRESET, [], agent="mcts", model=None)
    model = args.model or str(ensure_policy("default"))
    engine = create_engine(replace(EngineConfig(), model=model))
    tasks = [{"index": i} for i in range(args.problems)]
    try:
        run_once(engine, preset, True, tasks[:4], seed=99)  # warm-up: compile, caches
        rows: dict[bool, list[dict[str, float]]] = {True: [], False: []}
        for r in range(args.repeats):
            for value_head in (True, False):  # alternate: drifting load hits both alike
                rows[value_head].append(run_once(engine, preset, value_head, tasks, seed=r))
    finally:
        engine.shutdown()

    def total(value_head: bool, key: str) -> float:
        return sum(row[key] for row in rows[value_head])

    print(f"\n{args.problems} problems x {args.repeats} repeats, preset search settings")
    print(f"{'value_head':<12}{'wall s':>10}{'tokens':>12}{'tok/s':>10}{'correct':>10}")
    for value_head in (True, False):
        wall, tokens = total(value_head, "wall_s"), total(value_head, "tokens")
        print(
            f"{value_head!s:<12}{wall:>10.1f}{tokens:>12.0f}{tokens / wall:>10.0f}"
            f"{total(value_head, 'correct'):>10.0f}"
        )
    on = total(True, "tokens") / total(True, "wall_s")
    off = total(False, "tokens") / total(False, "wall_s")
    print(f"{'off / on':<12}{total(False, 'wall_s') / total(True, 'wall_s'):>10.2f}"
          f"{'':>12}{off / on:>10.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
