"""Evaluate a model or checkpoint: mean@k / pass@k on a data split, sparse reward, no search.

    python scripts/evaluate.py                                      # the tiny default policy
    python scripts/evaluate.py --model runs/Countdown-v0__mcts__0__20250101-120000/checkpoints/step_00000020
    python scripts/evaluate.py --model Qwen/Qwen2.5-1.5B-Instruct --chat-template --k 16 --num-problems 820
    python scripts/evaluate.py --model PATH --logdir runs/eval      # also write TensorBoard scalars
    python scripts/evaluate.py --model PATH --json-out eval.json     # the whole result, per problem
    python scripts/evaluate.py --model PATH --split train --first-problem -512   # last 512 train

A checkpoint directory (``.../checkpoints/step_N``) is a ``from_pretrained``-loadable model;
a run's ``checkpoints`` folder resolves to its latest checkpoint. Sampling is seeded
(``--seed``, default 0), so an evaluation repeats. Prints mean@k and pass@k with the
half-width of their 95% intervals over problems, then one line per metric (``--json``: a
JSON object of the scalars instead). ``--verbose`` also shows vLLM's INFO lines and
langrl's INFO logs. ``--json-out`` also keeps ``per_problem_correct`` and
``task_indices``: two such files on the same problems give a paired comparison with
``langrl.agents.evaluation.paired_diff_ci95``, tighter than two separate intervals.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    # allow_abbrev=False: no prefix matching (``--mod x`` must not mean ``--model x``).
    p = argparse.ArgumentParser(
        allow_abbrev=False, description="Evaluate mean@k of a policy on a langrl env."
    )
    p.add_argument("--model", help="model directory, checkpoint, or HF name (default: tiny)")
    p.add_argument("--env", default="Countdown-v0",
                   help="env id, or module:EnvId-v0 for an env of your own (default: Countdown-v0)")  # fmt: skip
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--k", type=int, default=16, help="samples per problem (default: 16)")
    p.add_argument("--num-problems", type=int, default=None,
                   help="N problems from --first-problem on (default: all to the end)")  # fmt: skip
    p.add_argument("--first-problem", type=int, default=0,
                   help="index of the first problem; negative counts from the end (default: 0)")  # fmt: skip
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--chat-template", action="store_true", help="encode prompts as chat")
    p.add_argument("--engine", default=None, help="engine backend, e.g. vllm or hf")
    p.add_argument("--gpu-memory-utilization", type=float, default=None)
    p.add_argument("--seed", type=int, default=0,
                   help="base of the per-problem sampling seeds: results repeat (default: 0)")  # fmt: skip
    p.add_argument("--logdir", default=None, help="also log the scalars to TensorBoard here")
    p.add_argument("--step", type=int, default=0, help="TensorBoard step of the scalars")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--json-out", default=None, metavar="PATH",
                   help="write the whole result (scalars, settings, per-problem counts) as JSON")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    # A flag, not a config field (so never a --key value override): it sets up logging.
    p.add_argument("--verbose", action="store_true",
                   help="also show vLLM's INFO lines and langrl's INFO logs")  # fmt: skip
    return p.parse_args(argv)


def resolve_model(model: str | None) -> str:
    if model is None:
        from langrl.tiny import ensure_policy

        return str(ensure_policy("default"))
    path = Path(model).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        from langrl.learner import latest_checkpoint  # a run's checkpoints/ folder

        latest = latest_checkpoint(path) or latest_checkpoint(path / "checkpoints")
        if latest is not None:
            return str(latest)
    return model


def _finite_or_none(value: float) -> float | None:
    """Strict JSON has no NaN (an interval of one problem is undefined): write null."""
    return value if math.isfinite(value) else None


def main(argv: list[str] | None = None) -> int:
    start = time.perf_counter()
    args = parse_args(argv)
    from langrl.logging_setup import setup_logging

    setup_logging(args.verbose)  # before anything imports vLLM: its processes inherit the level
    from langrl.agents.evaluation import EvalConfig, evaluate
    from langrl.training.config import ConfigError, check_env, check_model

    try:
        eval_config = EvalConfig(
            k=args.k,
            temperature=args.temperature,
            max_tokens=args.max_tokens,
            num_problems=args.num_problems,
            first_problem=args.first_problem,
            split=args.split,
            seed=args.seed,
            progress=not args.quiet,
        )
        check_env(args.env, {}, evaluation=eval_config)
        model = resolve_model(args.model)
        check_model(model)
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    from dataclasses import replace

    from langrl.engine import EngineConfig, create_engine

    engine_config = replace(EngineConfig(), model=model, use_chat_template=args.chat_template)
    if args.engine is not None:
        engine_config = replace(engine_config, backend=args.engine)
    if args.gpu_memory_utilization is not None:
        engine_config = replace(engine_config, gpu_memory_utilization=args.gpu_memory_utilization)
    from langrl.signals import interrupt_on_sigterm

    interrupt_on_sigterm()  # `kill` runs the engine shutdown below, as Ctrl-C does
    engine = create_engine(engine_config)
    try:
        result = evaluate(engine, args.env, {}, None, eval_config)
    except KeyboardInterrupt:
        return 130
    finally:
        engine.shutdown()

    scalars = {k: v for k, v in result.items() if "/" in k}
    if args.json_out:
        record = {
            "model": model,
            "env": args.env,
            "split": args.split,
            "first_problem": args.first_problem,
            "num_problems": len(result["task_indices"]),
            "k": args.k,
            "temperature": args.temperature,
            "max_tokens": args.max_tokens,
            "seed": args.seed,
            "scalars": {k: _finite_or_none(v) for k, v in scalars.items()},
            "per_problem_correct": result["per_problem_correct"],
            "task_indices": result["task_indices"],
            "wall_s": time.perf_counter() - start,
        }
        out = Path(args.json_out).expanduser()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=1) + "\n")
    if args.logdir:
        from langrl.metrics import TensorBoardLogger

        with TensorBoardLogger(args.logdir) as tb:
            tb.log_scalars(scalars, args.step)
            tb.log_text("eval/samples", result["samples"], args.step)
    if args.json:
        print(json.dumps({"model": model, "env": args.env, "split": args.split, **scalars}))
    else:
        n = len(result["task_indices"])
        print(f"model {model} on {args.env} ({args.split}, {n} problems), k={args.k}:")
        for name in ("mean", "pass"):
            value, half = scalars[f"eval/{name}_at_k"], scalars[f"eval/{name}_at_k_ci95"]
            print(f"  {name}@{args.k:<3d} {100 * value:6.2f}% +- {100 * half:.2f} (95% interval)")
        for key, value in scalars.items():
            print(f"  {key:28s} {value:.4f}")
    return 0


if __name__ == "__main__":  # vLLM spawns processes: keep the guard
    sys.exit(main())
