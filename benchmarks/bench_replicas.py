"""Engine replicas on Ray against the one in-process engine: generated tokens/s and push time.

Three setups of the same vLLM engine config on the same model, started one after another
in one run:

  (a) one engine in this process (no Ray): the baseline of every ratio;
  (b) one replica on a local Ray (``engine.replicas=1``, ``cluster.address=local``): what the
      actor hop alone costs;
  (c) ``--replicas`` replicas (default 2), each reserving one CPU.

Generation: ``--callers`` concurrent requests of distinct Countdown-like prompts (n=``--n``,
``--max-tokens`` each), the traffic of many search workers, through the client's routing
(least busy replica). Tokens/s counts the tokens returned; best of ``--repeats`` after one
warm-up. Push: ``load_weights`` of the model's full state (alternating two states), best of
``--repeats``; through Ray it is one ``ray.put`` and a concurrent load on every replica.

On the 2 shared cores of the CI machine two replicas cannot beat one: every replica's
EngineCore and worker compete for the same cores. The table says what the replicas cost
here; on GPUs each replica has its own device and throughput adds up until the learner or
the push is the bound.

    nice -n 19 .venv/bin/python benchmarks/bench_replicas.py
    nice -n 19 .venv/bin/python benchmarks/bench_replicas.py --replicas 2 --callers 64
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import replace

import torch

from langrl.distributed.config import ClusterConfig
from langrl.engine import EngineConfig, Generation, SamplingConfig, SyncEngine, create_engine


def tokens_per_second(run: Callable[[], list[Generation]], repeats: int) -> float:
    """Best generated tokens/s over ``repeats`` runs after a warm-up run."""
    run()
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        gens = run()
        tokens = sum(len(s.token_ids) for g in gens for s in g.samples)
        best = max(best, tokens / (time.perf_counter() - start))
    return best


def push_seconds(engine: SyncEngine, model: str, repeats: int) -> float:
    """Best wall seconds of one full push (two states alternate, so every push changes)."""
    from langrl.engine.common import tied_parameter_names
    from langrl.policy_model import PolicyValueModel

    model_copy = PolicyValueModel.from_pretrained(model)
    aliases = tied_parameter_names(model_copy.lm)  # pushed once, as the learner exports them
    lm = {k: v.detach().clone() for k, v in model_copy.lm.state_dict().items() if k not in aliases}
    head = {k: v.detach().clone() for k, v in model_copy.value_head.state_dict().items()}
    moved = {
        k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in lm.items()
    }
    best = float("inf")
    for i in range(repeats + 1):
        start = time.perf_counter()
        engine.load_weights(moved if i % 2 == 0 else lm, head)
        if i:  # the first push is a warm-up
            best = min(best, time.perf_counter() - start)
    engine.load_weights(lm, head)
    return best


def measure(engine: SyncEngine, args: argparse.Namespace, model: str) -> tuple[float, float]:
    tok = engine.tokenizer
    prompts = [
        list(tok(f"Numbers: {i % 13 + 1} {i % 7 + 2} {i % 5 + 3}\nTarget: {i + 10}\n")["input_ids"])
        for i in range(args.callers)
    ]
    sampling = SamplingConfig(n=args.n, max_tokens=args.max_tokens, temperature=1.0)
    tps = tokens_per_second(lambda: engine.generate_many(prompts, sampling), args.repeats)
    return tps, push_seconds(engine, model, args.repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory (default: the tiny default policy)")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    model = args.model
    if model is None:
        from langrl.tiny import ensure_policy

        model = str(ensure_policy("default"))
    config = EngineConfig(model=model, enforce_eager=True, kv_cache_gib=0.5, seed=0)
    local = ClusterConfig(address="local")
    setups = {
        "(a) in-process engine, no Ray": (config, None),
        "(b) 1 replica on Ray": (replace(config, replicas=1), local),
        f"(c) {args.replicas} replicas on Ray": (replace(config, replicas=args.replicas), local),
    }
    rows: dict[str, tuple[float, float, float]] = {}
    for name, (engine_config, cluster) in setups.items():
        start = time.perf_counter()
        with create_engine(engine_config, cluster) as engine:
            started = time.perf_counter() - start
            tps, push = measure(engine, args, model)
        rows[name] = (started, tps, push)
        print(f"{name}: started in {started:.0f} s, {tps:.0f} tokens/s, push {push * 1e3:.0f} ms")

    base_tps, base_push = rows["(a) in-process engine, no Ray"][1:]
    print(
        f"\nworkload: {args.callers} callers x n={args.n} x max_tokens={args.max_tokens}; "
        f"model {model}; vLLM eager; {torch.get_num_threads()} torch threads here"
    )
    print(f"{'setup':<34} {'start s':>8} {'tokens/s':>9} {'x (a)':>6} {'push ms':>8} {'x (a)':>6}")
    for name, (started, tps, push) in rows.items():
        print(
            f"{name:<34} {started:>8.0f} {tps:>9.0f} {tps / base_tps:>6.2f} "
            f"{push * 1e3:>8.1f} {push / base_push:>6.2f}"
        )


if __name__ == "__main__":
    main()
