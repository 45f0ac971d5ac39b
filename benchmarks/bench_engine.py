"""Policy-server throughput: many concurrent small requests vs one big call, vLLM vs HF.

The workload is what tree search makes: many callers at once, each asking for a few short
completions of its own prefix. Measured on a tiny Qwen2 policy (random weights, the
architecture of the default preset unless ``--model`` is given):

  (a) vLLM, ``--callers`` concurrent requests (n=``--n``, ``--max-tokens`` each) through
      ``SyncEngine.generate_many`` (one ``asyncio.gather`` of ``VLLMEngine.generate``);
  (b) vLLM, one request with n = callers x n and the same max_tokens: the batched limit;
  (c) the HF engine on workload (a).

Generated tokens/s counts the tokens actually returned (samples may stop early at EOS).
Each figure is the best of ``--repeats`` runs after one warm-up run.

    python benchmarks/bench_engine.py                 # compiled vLLM (the default config)
    python benchmarks/bench_engine.py --eager         # vLLM without graph compilation
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace

from langrl.engine import EngineConfig, Generation, SamplingConfig, SyncEngine, create_engine


def tokens_per_second(run: Callable[[], list[Generation]], repeats: int) -> tuple[int, float]:
    """(tokens of the last run, best tokens/s over ``repeats`` runs after a warm-up)."""
    run()
    best, tokens = 0.0, 0
    for _ in range(repeats):
        start = time.perf_counter()
        gens = run()
        elapsed = time.perf_counter() - start
        tokens = sum(len(s.token_ids) for g in gens for s in g.samples)
        best = max(best, tokens / elapsed)
    return tokens, best


def measure(engine: SyncEngine, args: argparse.Namespace, big: bool) -> tuple[int, float]:
    tok = engine.tokenizer
    # Distinct prompts, like the different tree nodes of many search workers.
    prompts = [
        list(tok(f"{i % 13 + 1} {i % 7 + 2} {i % 5 + 3} {i % 11 + 1} -> {i}: ")["input_ids"])
        for i in range(args.callers)
    ]
    sampling = SamplingConfig(n=args.n, max_tokens=args.max_tokens, temperature=1.0)
    if big:
        one = replace(sampling, n=args.n * args.callers)
        return tokens_per_second(lambda: [engine.generate(prompts[0], one)], args.repeats)
    return tokens_per_second(lambda: engine.generate_many(prompts, sampling), args.repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory (default: build a random tiny one)")
    parser.add_argument("--preset", default="default", help="tiny preset when building")
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eager", action="store_true", help="vLLM enforce_eager=True")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from langrl.tiny.model import build_random_policy

            model = str(build_random_policy(tmp, preset=args.preset))
        config = EngineConfig(model=model, enforce_eager=args.eager, kv_cache_gib=1.0)

        rows: dict[str, tuple[int, float]] = {}
        start = time.perf_counter()
        with create_engine(config) as engine:
            startup = time.perf_counter() - start
            rows["(a) vLLM, concurrent callers"] = measure(engine, args, big=False)
            rows["(b) vLLM, one big request"] = measure(engine, args, big=True)
        with create_engine(replace(config, backend="hf")) as engine:
            rows["(c) HF, concurrent callers"] = measure(engine, args, big=False)

    print(
        f"\nworkload: {args.callers} callers x n={args.n} x max_tokens={args.max_tokens}"
        f" (b: 1 request x n={args.callers * args.n}); model {model} ({args.preset if args.model is None else 'given'});"
        f" vLLM {'eager' if args.eager else 'compiled'}, started in {startup:.0f} s"
    )
    print(f"{'run':<32} {'tokens':>8} {'tokens/s':>10}")
    for name, (tokens, tps) in rows.items():
        print(f"{name:<32} {tokens:>8} {tps:>10.0f}")
    a, b, c = (tps for _, tps in rows.values())
    print(f"(a)/(b) = {a / b:.2f}   (c)/(a) = {c / a:.2f}")


if __name__ == "__main__":
    main()
