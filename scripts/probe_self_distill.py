"""Offline probe: does distilling a policy's own correct samples improve it, and at what lr?

Rejection sampling without the online loop, so that one set of samples serves many learner
settings (generation is the expensive part on CPU):

    python scripts/probe_self_distill.py sample --num-problems 1024 --out /tmp/correct.pkl
    python scripts/probe_self_distill.py train --data /tmp/correct.pkl --out-dir /tmp/ckpt \
        --settings 1e-4,1 1e-4,3 3e-4,3 1e-3,3
    python scripts/evaluate.py --model /tmp/ckpt/lr0.0001_passes1 --split train \
        --first-problem -512 --num-problems 512 --k 4 --max-tokens 96

``sample`` draws ``--num-problems`` train problems at random from all but the last
``--holdout`` (the validation slice ``configs/reproduce.yaml`` holds out), samples ``--n``
completions of each at ``--temperature`` (the best-of-N agent's sampling) and keeps the
correct ones as its Trajectories (the engine's ids and logprobs) with advantage 1. ``train``
trains a fresh copy of the policy on them for each ``lr,passes`` setting through the shared
learner (CISPO-weighted policy term only: no value loss, no KL) and saves a
``from_pretrained``-loadable model per setting. Validate on the held-out train slice, never
on the test set. ``results/probes/README.md`` has the
results that chose the reproduce preset.
"""

from __future__ import annotations

import argparse
import collections
import json
import pickle
import random
import sys
import time
from dataclasses import replace
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("phase", choices=["sample", "train"])
    p.add_argument("--model", default=None, help="policy to probe (default: the tiny policy)")
    p.add_argument("--env", default="Countdown-v0")
    p.add_argument("--num-problems", type=int, default=1024, help="train problems to sample")
    p.add_argument("--holdout", type=int, default=512, help="last train problems left out")
    p.add_argument("--n", type=int, default=16, help="samples per problem")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature")
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--seed", type=int, default=0, help="which problems; the pass order")
    p.add_argument("--data", "--out", dest="data", default="correct.pkl",
                   help="pickled Trajectories: written by sample, read by train")  # fmt: skip
    p.add_argument("--out-dir", default="probe_checkpoints", help="train: one model per setting")
    p.add_argument("--settings", nargs="+", default=["1e-4,1"], metavar="LR,PASSES")
    p.add_argument("--batch-size", type=int, default=32)
    return p.parse_args(argv)


def resolve_model(model: str | None) -> str:
    if model is not None:
        return model
    from langrl.tiny import ensure_policy

    return str(ensure_policy("default"))


def sample(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from langrl.agents._sampling import is_correct
    from langrl.agents.best_of_n import BestOfNAgent, BestOfNConfig
    from langrl.engine import EngineConfig, create_engine

    engine = create_engine(replace(EngineConfig(), model=resolve_model(args.model)))
    # The best-of-N agent's sampling and Trajectory records, keeping every correct sample.
    agent = BestOfNAgent(
        BestOfNConfig(n=args.n, max_tokens=args.max_tokens, temperature=args.temperature),
        args.env, {"reward": "dense"}, engine.engine,
    )  # fmt: skip
    pool = agent.env.num_tasks() - args.holdout
    indices = random.Random(args.seed).sample(range(pool), args.num_problems)
    kept = []
    reasons: collections.Counter[str] = collections.Counter()
    tokens, start = 0, time.perf_counter()
    bar = tqdm(total=len(indices), desc="sample", unit="problem")
    try:
        for first in range(0, len(indices), 256):
            tasks = [{"index": i} for i in indices[first : first + 256]]
            episodes, groups = engine.run(agent.sample(tasks, args.n))
            for ep, group in zip(episodes, groups, strict=True):
                for g in group:
                    tokens += len(g.sample.token_ids)
                    reasons[str(g.info.get("reason"))] += 1
                    if is_correct(g) and g.sample.token_ids:
                        ones = [1.0] * len(g.sample.token_ids)
                        kept.append(agent.trajectory(ep, g, advantages=ones))
            bar.update(len(tasks))
            bar.set_postfix(correct=len(kept), tokens=tokens)
    finally:
        bar.close()
        engine.shutdown()
    with open(args.data, "wb") as f:
        pickle.dump(kept, f)
    summary = {
        "problems": len(indices),
        "samples": sum(reasons.values()),
        "correct": len(kept),
        "problems_with_a_correct_sample": len({t.info["task"]["index"] for t in kept}),
        "generated_tokens": tokens,
        "wall_s": round(time.perf_counter() - start, 1),
        "reasons": dict(reasons.most_common()),
    }
    print(json.dumps(summary, indent=1))
    return 0


def train(args: argparse.Namespace) -> int:
    from langrl.learner import Learner, LearnerConfig

    with open(args.data, "rb") as f:
        data = pickle.load(f)
    model = resolve_model(args.model)
    for spec in args.settings:
        lr_text, passes_text = spec.split(",")
        lr, passes = float(lr_text), int(passes_text)
        # Each trajectory carries its sampling temperature: the learner scores at that one.
        config = LearnerConfig(lr=lr, warmup_steps=5, c_value=0.0, c_kl=0.0,
                               micro_batch_size=args.batch_size)  # fmt: skip
        learner = Learner(model, config)
        rng = random.Random(args.seed)
        start, metrics = time.perf_counter(), {}
        for _ in range(passes):
            order = list(data)
            rng.shuffle(order)
            for first in range(0, len(order) - args.batch_size + 1, args.batch_size):
                metrics = learner.step(order[first : first + args.batch_size])
        out = Path(args.out_dir) / f"lr{lr:g}_passes{passes}"
        learner.model.save_pretrained(out)
        if learner.tokenizer is not None:
            learner.tokenizer.save_pretrained(out)
        print(f"lr {lr:g}, {passes} pass(es): {learner.global_step} steps, last policy loss "
              f"{metrics.get('loss/policy', float('nan')):.3f}, "
              f"{time.perf_counter() - start:.0f} s -> {out}", flush=True)  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return sample(args) if args.phase == "sample" else train(args)


if __name__ == "__main__":  # vLLM spawns processes: keep the guard
    sys.exit(main())
