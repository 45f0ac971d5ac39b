"""MCTS search cost of one setting against another, through one real vLLM engine.

Each comparison flips one ``MCTSConfig`` field of the reproduce preset's MCTS
(``configs/reproduce.yaml``, merged for the agent) and runs the same searches (the same
seeds, the same train problems, all searched at once as one rollout) both ways on the tiny
default policy, alternating the two ``--repeats`` times. It prints wall time, generated
tokens per second, solved trees and distinct solutions in the trees (what
``distill="solutions"`` can distil); the ratio row compares the two in this same run.

- ``value_head``: True calls ``PolicyEngine.values`` (a forward pass of the transformers
  copy beside vLLM, on the same cores) on every expansion; False backs up
  ``first_play_value`` (the preset's, whose head is untrained).
- ``priors``: ``policy`` scores every expansion's samples at temperature 1 with
  ``engine.score`` (another transformers pass); ``sampling`` (the preset's) uses the
  logprobs the samples came with.
- ``prune_failed_steps``: True drops the steps whose env check fails (Countdown: a number
  not given, wrong arithmetic) at expansion, and ends the simulation at a node left with
  none; False (the paper's search) keeps them as children.

    python benchmarks/bench_mcts_search.py --compare priors       # 48 problems, 2 repeats
    python benchmarks/bench_mcts_search.py --compare value_head --problems 32 --repeats 3
    python benchmarks/bench_mcts_search.py --compare prune_failed_steps
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import replace
from pathlib import Path

from langrl.agents.mcts import MCTSAgent, iter_nodes
from langrl.engine import EngineConfig, create_engine
from langrl.tiny import ensure_policy
from langrl.training.config import load_config

#: The preset whose MCTS searches are measured (its ``mcts`` section, merged per agent).
PRESET = Path(__file__).resolve().parent.parent / "configs" / "reproduce.yaml"
#: Field -> (baseline value, compared value).
COMPARISONS = {
    "value_head": (True, False),
    "priors": ("policy", "sampling"),
    "prune_failed_steps": (False, True),
}
#: First train problem searched: clear of the holdout (the last 512) and of the start.
FIRST_PROBLEM = 1000


def run_once(engine, preset, field: str, value, tasks: list[dict], seed: int) -> dict:
    agent = MCTSAgent(
        replace(preset.agent_config, **{field: value}, seed=seed),
        preset.env_id,
        preset.env_kwargs,
        engine.engine,  # the async engine: the searches run on the engine's loop
    )

    async def search_all():
        return await asyncio.gather(*(agent.search(task) for task in tasks))

    start = time.perf_counter()
    results = engine.run(search_all())
    wall = time.perf_counter() - start
    solutions = [
        {tuple(t for n in node.path()[1:] for t in n.step_ids)
         for node in iter_nodes(r.root) if node.terminal and node.outcome.get("is_correct")}
        for r in results
    ]  # fmt: skip
    return {
        "wall_s": wall,
        "tokens": sum(r.counters.sampled_tokens for r in results),
        "solved": sum(bool(s) for s in solutions),
        "solutions": sum(len(s) for s in solutions),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", choices=sorted(COMPARISONS), default="priors")
    parser.add_argument("--problems", type=int, default=48, help="train problems searched")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each setting")
    parser.add_argument("--model", help="policy directory (default: the tiny default policy)")
    args = parser.parse_args()

    field, values = args.compare, COMPARISONS[args.compare]
    preset = load_config(PRESET, [], agent="mcts", model=None)
    model = args.model or str(ensure_policy("default"))
    engine = create_engine(replace(EngineConfig(), model=model))
    tasks = [{"index": FIRST_PROBLEM + i} for i in range(args.problems)]
    try:
        run_once(engine, preset, field, values[1], tasks[:4], seed=99)  # warm-up
        rows: dict = {v: [] for v in values}
        for r in range(args.repeats):
            for value in values:  # alternate: drifting load hits both alike
                rows[value].append(run_once(engine, preset, field, value, tasks, seed=r))
    finally:
        engine.shutdown()

    def total(value, key: str) -> float:
        return sum(row[key] for row in rows[value])

    print(f"\n{args.problems} problems x {args.repeats} repeats, preset search settings")
    print(f"{field:<12}{'wall s':>10}{'tokens':>12}{'tok/s':>10}{'solved':>10}{'solutions':>11}")
    for value in values:
        wall, tokens = total(value, "wall_s"), total(value, "tokens")
        print(
            f"{value!s:<12}{wall:>10.1f}{tokens:>12.0f}{tokens / wall:>10.0f}"
            f"{total(value, 'solved'):>10.0f}{total(value, 'solutions'):>11.0f}"
        )
    base, new = values
    rate = {v: total(v, "tokens") / total(v, "wall_s") for v in values}
    print(f"{f'{new} / {base}':<12}{total(new, 'wall_s') / total(base, 'wall_s'):>10.2f}"
          f"{'':>12}{rate[new] / rate[base]:>10.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
