"""MCTS search cost of one setting against another, and against best-of-N sampling, through
one real vLLM engine.

Each comparison flips one ``MCTSConfig`` field of the reproduce preset's MCTS
(``configs/reproduce.yaml``, merged for the agent) and runs the same searches (the same
seeds, the same train problems, all searched at once as one rollout) both ways on the tiny
default policy; beside them, best-of-N samples ``--bon-n`` whole answers per problem of the
same problems at the preset's best-of-N settings (T 0.8, at most 96 tokens), all at once.
The three runs alternate ``--repeats`` times. Per row: wall time, generated tokens, tokens
per second, solved problems, distinct correct ends (MCTS: the tree's correct ends, and a
correct finishing sample of a tree with none, what ``distill="solutions"`` can distil;
best-of-N: distinct correct samples), tokens per correct end and correct ends per minute.
The ratio rows compare each with the first MCTS setting in this same run.

- ``value_head``: True calls ``PolicyEngine.values`` (a forward pass of the transformers
  copy beside vLLM, on the same cores) on every expansion; False backs up
  ``first_play_value`` (the preset's, whose head is untrained).
- ``priors``: ``policy`` scores every expansion's samples at temperature 1 with
  ``engine.score`` (another transformers pass); ``sampling`` (the preset's) uses the
  logprobs the samples came with.
- ``prune_failed_steps``: True drops the steps whose env check fails (Countdown: a number
  not given, wrong arithmetic) at expansion, and ends the simulation at a node left with
  none; False (the paper's search) keeps them as children.
- ``expansion_retries``: 2 expands a node whose K steps all failed their check up to twice
  more before it is dead; 0 (the preset's) declares it dead at once.
- ``searches_at_once`` (not an ``MCTSConfig`` field: the training run's
  ``tasks_per_rollout``): the same searches, 48 at a time (one rollout of the preset before
  this comparison) against all ``--problems`` at once. Tokens and correct ends barely move
  (the same seeds; only the order of engine calls differs); wall time and tok/s show how
  much of the engine a batch of trees keeps busy.
- ``single_token_stops`` (an ``EngineConfig`` field, flipped on the running engine):
  False gives vLLM the step's stop strings only, found by its front end, which aborts the
  request some decoding steps later; True (the default) also gives it the one-token stop
  strings as stop token ids, which its scheduler ends at once. Best-of-N runs under both
  values (its ``</answer>`` stop is one token too); the samples are the same either way.

    python benchmarks/bench_mcts_search.py --compare priors       # 48 problems, 2 repeats
    python benchmarks/bench_mcts_search.py --compare value_head --problems 32 --repeats 3
    python benchmarks/bench_mcts_search.py --compare prune_failed_steps
    python benchmarks/bench_mcts_search.py --compare expansion_retries --problems 96
    python benchmarks/bench_mcts_search.py --compare searches_at_once --problems 192
    python benchmarks/bench_mcts_search.py --compare single_token_stops --problems 64
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import replace
from pathlib import Path

from proc_cpu import CpuMeter, format_shares

from langrl.agents.best_of_n import BestOfNAgent
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
    "expansion_retries": (0, 2),
    "searches_at_once": (48, None),  # None: all --problems at once
    "single_token_stops": (False, True),
}
#: Comparisons that change how many searches run at once, not the search itself.
AT_ONCE = "searches_at_once"
#: Comparisons of an ``EngineConfig`` field read on every request: flipped on the running
#: engine for both the searches and best-of-N, which gets a row per value too.
ENGINE_FIELDS = ("single_token_stops",)
#: First train problem searched: clear of the holdout (the last 512) and of the start.
FIRST_PROBLEM = 1000


def run_once(engine, preset, field: str, value, tasks: list[dict], seed: int) -> dict:
    """Search every task with ``field = value`` (``searches_at_once``: in groups of
    ``value`` tasks, one group after the other, as successive rollouts would; all at once
    otherwise)."""
    at_once = value if field == AT_ONCE else None
    changes = {} if field in (AT_ONCE, *ENGINE_FIELDS) else {field: value}
    agent = MCTSAgent(
        replace(preset.agent_config, **changes, seed=seed),
        preset.env_id,
        preset.env_kwargs,
        engine.engine,  # the async engine: the searches run on the engine's loop
    )
    groups = [tasks[i : i + at_once] for i in range(0, len(tasks), at_once)] if at_once else [tasks]

    async def search_all():
        # Each search draws its seed from the agent's RNG as it starts, and gather starts
        # them in task order, so grouping does not change the searches.
        results = []
        for group in groups:
            results += await asyncio.gather(*(agent.search(task) for task in group))
        return results

    meter = CpuMeter().start()
    start = time.perf_counter()
    results = engine.run(search_all())
    wall = time.perf_counter() - start
    cpu = meter.stop()
    solutions = []
    for r in results:
        ends = {
            tuple(t for n in node.path()[1:] for t in n.step_ids)
            for node in iter_nodes(r.root)
            if node.terminal and node.outcome.get("is_correct")
        }
        if not ends and r.trajectory.info["is_correct"]:  # a tree with no end, finished
            ends.add(tuple(r.trajectory.completion_ids))
        solutions.append(ends)
    prompt_tokens = sum(r.counters.prompt_tokens for r in results)
    return {
        "wall_s": wall,
        "cache_hit": sum(r.counters.cached_prompt_tokens for r in results) / max(prompt_tokens, 1),
        "cpu": cpu,
        "tokens": sum(r.counters.sampled_tokens for r in results),
        "solved": sum(bool(s) for s in solutions),
        "solutions": sum(len(s) for s in solutions),
    }


def run_best_of_n(engine, bon_preset, n: int, tasks: list[dict], seed: int) -> dict:
    """``n`` whole answers per task at the preset's best-of-N settings, graded by the env."""
    agent = BestOfNAgent(
        replace(bon_preset.agent_config, seed=seed),
        bon_preset.env_id,
        bon_preset.env_kwargs,
        engine.engine,
    )
    meter = CpuMeter().start()
    start = time.perf_counter()
    _, groups = engine.run(agent.sample(tasks, n))
    wall = time.perf_counter() - start
    cpu = meter.stop()
    solutions = [
        {tuple(g.sample.token_ids) for g in group if g.info.get("is_correct")} for group in groups
    ]
    return {
        "wall_s": wall,
        "cpu": cpu,
        "tokens": sum(len(g.sample.token_ids) for group in groups for g in group),
        "solved": sum(bool(s) for s in solutions),
        "solutions": sum(len(s) for s in solutions),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", choices=sorted(COMPARISONS), default="priors")
    parser.add_argument("--problems", type=int, default=48, help="train problems searched")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each setting")
    parser.add_argument("--model", help="policy directory (default: the tiny default policy)")
    parser.add_argument("--bon-n", type=int, default=32, help="best-of-N samples per problem")
    parser.add_argument(
        "--block-size",
        type=int,
        help="the engine's KV-cache block size (default: EngineConfig's; 128 was vLLM's CPU "
        "default before langrl set 32, the before of the prefix-cache comparison)",
    )
    args = parser.parse_args()

    field, values = args.compare, COMPARISONS[args.compare]
    preset = load_config(PRESET, [], agent="mcts", model=None)
    bon_preset = load_config(PRESET, [], agent="bon", model=None)
    model = args.model or str(ensure_policy("default"))
    engine = create_engine(replace(EngineConfig(), model=model, block_size=args.block_size))
    tasks = [{"index": FIRST_PROBLEM + i} for i in range(args.problems)]
    on_engine = field in ENGINE_FIELDS
    mcts_labels = [f"{field}={args.problems if v is None else v}" for v in values]
    # One best-of-N row, or one per value of an engine field (which changes it too).
    if on_engine:
        bon_labels = [f"best-of-{args.bon_n} {field}={v}" for v in values]
    else:
        bon_labels = [f"best-of-{args.bon_n}"]
    bon = bon_labels[-1]
    labels = mcts_labels + bon_labels

    def set_engine(value) -> None:
        if on_engine:
            setattr(engine.engine.config, field, value)

    try:
        run_once(engine, preset, field, values[1], tasks[:4], seed=99)  # warm-up
        run_best_of_n(engine, bon_preset, args.bon_n, tasks[:4], seed=99)
        rows: dict = {label: [] for label in labels}
        for r in range(args.repeats):
            for label, value in zip(mcts_labels, values, strict=True):  # alternate: drifting
                set_engine(value)
                rows[label].append(run_once(engine, preset, field, value, tasks, seed=r))
            for label, value in zip(bon_labels, values, strict=False):  # one row: values[0]
                set_engine(value)
                rows[label].append(run_best_of_n(engine, bon_preset, args.bon_n, tasks, seed=r))
    finally:
        engine.shutdown()

    def total(label, key: str) -> float:
        return sum(row[key] for row in rows[label])

    print(
        f"\n{args.problems} problems x {args.repeats} repeats; MCTS: the preset's search "
        f"settings; {bon}: the preset's best-of-N sampling; KV block size "
        f"{args.block_size or 'default'}; prefix cache hit (MCTS expansions): "
        + ", ".join(
            f"{label} {total(label, 'cache_hit') / args.repeats:.2f}" for label in mcts_labels
        )
    )
    width = max(len(label) for label in labels) + 2
    print(
        f"{'':<{width}}{'wall s':>8}{'tokens':>10}{'tok/s':>8}{'solved':>8}"
        f"{'correct':>9}{'tok/correct':>13}{'correct/min':>13}"
    )
    for label in labels:
        wall, tokens, correct = (total(label, k) for k in ("wall_s", "tokens", "solutions"))
        per = f"{tokens / correct:>13.0f}" if correct else f"{'-':>13}"
        print(
            f"{label:<{width}}{wall:>8.1f}{tokens:>10.0f}{tokens / wall:>8.0f}"
            f"{total(label, 'solved'):>8.0f}{correct:>9.0f}{per}{60 * correct / wall:>13.1f}"
        )
    # Where the CPU went in each row: this process (the searches, the env steps and vLLM's
    # front end: tokens in and out, detokenizing, stop strings) against vLLM's scheduler
    # (EngineCore) and model (Worker).
    print("CPU, share of one core over the row's wall time:")
    for label in labels:
        cpu: dict[str, float] = {}
        for row in rows[label]:
            for name, seconds in row["cpu"].items():
                cpu[name] = cpu.get(name, 0.0) + seconds
        print(f"  {label:<{width}}{format_shares(cpu, total(label, 'wall_s'))}")
    rate = {k: total(k, "tokens") / total(k, "wall_s") for k in labels}
    found = {k: total(k, "solutions") / total(k, "wall_s") for k in labels}
    pairs = [(label, labels[0]) for label in labels[1:]]
    if on_engine:  # each setting against the other, and MCTS against best-of-N under each
        pairs = [(mcts_labels[1], mcts_labels[0]), (bon_labels[1], bon_labels[0])]
        pairs += list(zip(mcts_labels, bon_labels, strict=True))
    for label, base in pairs:
        # A few problems may leave the baseline without a correct end: no ratio then.
        per_min = f"{found[label] / found[base]:.2f}x" if found[base] else "-"
        print(f"{label} / {base}: tok/s {rate[label] / rate[base]:.2f}x, correct/min {per_min}")


if __name__ == "__main__":
    main()
