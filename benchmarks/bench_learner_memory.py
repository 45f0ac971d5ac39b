"""Learner peak memory on a large vocabulary: full-vocabulary logits vs chunked logprobs.

A Qwen2-shaped model with Qwen2.5's 151,936-token vocabulary and a small hidden size (random
weights, built locally with ``Qwen2Config``; tied embeddings as in Qwen2.5-1.5B), one
``Learner.step`` (c_kl = 0.05, so the reference model's pass is included) on one micro-batch
of ``--batch`` trajectories of ``--prompt`` + ``--completion`` tokens. Each variant runs in
its own subprocess; its figure is the step's peak resident memory above the resident memory
just before the step (``ru_maxrss`` after, ``/proc/self/statm`` before), on CPU. With this
shape the logits dwarf everything else, so the figure is essentially the logits' memory.

Variants: ``logits_chunk_size`` = None (trained positions only, one chunk), 1024 (the
default; one chunk too when a micro-batch trains fewer tokens, as the default shape here
does), 256, 64; with ``--baseline-rev REV`` also the learner of git revision REV (e.g. the commit before
chunking, d345fcd: full-vocabulary logits at every position), from a ``git archive`` of it.

    nice -n 19 .venv/bin/python benchmarks/bench_learner_memory.py --baseline-rev d345fcd
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VOCAB = 151_936  # Qwen2.5's vocabulary

# Runs in the subprocess (its `langrl` may be another revision's): build nothing, load the
# model, time and measure one step, print one JSON line.
_CHILD = r"""
import json, os, resource, sys, time
import torch
from langrl.learner import Learner, LearnerConfig
from langrl.trajectory import Trajectory

model, batch, prompt, completion, chunk = sys.argv[1:6]
batch, prompt, completion = int(batch), int(prompt), int(completion)
torch.set_num_threads(2)
kwargs = {} if chunk == "absent" else {"logits_chunk_size": None if chunk == "None" else int(chunk)}
learner = Learner(model, LearnerConfig(c_kl=0.05, micro_batch_size=batch, **kwargs))
g = torch.Generator().manual_seed(0)
trajs = [
    Trajectory(
        torch.randint(0, 151_000, (prompt,), generator=g).tolist(),
        torch.randint(0, 151_000, (completion,), generator=g).tolist(),
        [-12.0] * completion,
        1.0 if i % 2 else -1.0,
    )
    for i in range(batch)
]
page = os.sysconf("SC_PAGE_SIZE")
before = int(open("/proc/self/statm").read().split()[1]) * page  # resident bytes now
start = time.perf_counter()
metrics = learner.step(trajs)
elapsed = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
print(json.dumps({"delta": peak - before, "seconds": elapsed, "loss": metrics["loss/total"]}))
"""


def build_model(path: Path, hidden: int, layers: int) -> None:
    """A random Qwen2 causal LM with the 151,936-token vocabulary, saved to ``path``."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        max_position_embeddings=4096,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(str(path))


def run_variant(
    model: Path, args: argparse.Namespace, chunk: str, src: Path
) -> dict[str, float] | None:
    """One ``Learner.step`` in a fresh interpreter whose ``langrl`` comes from ``src``."""
    env = {**os.environ, "PYTHONPATH": str(src), "TOKENIZERS_PARALLELISM": "false"}
    argv = [str(model), str(args.batch), str(args.prompt), str(args.completion), chunk]
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, *argv], capture_output=True, text=True, env=env, cwd=src
    )
    if proc.returncode != 0:
        print(f"variant {chunk!r} from {src} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4, help="trajectories (one micro-batch)")
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens each")
    parser.add_argument("--completion", type=int, default=224, help="completion tokens each")
    parser.add_argument("--hidden", type=int, default=64, help="hidden size")
    parser.add_argument("--layers", type=int, default=2, help="decoder layers")
    parser.add_argument("--baseline-rev", help="git revision whose learner is the baseline row")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        build_model(model, args.hidden, args.layers)
        rows: list[tuple[str, dict[str, float] | None]] = []
        if args.baseline_rev:
            src = Path(tmp) / "baseline"
            src.mkdir()
            archive = subprocess.run(
                ["git", "-C", str(ROOT), "archive", args.baseline_rev],
                check=True,
                capture_output=True,
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
            label = f"{args.baseline_rev}: full logits, every position"
            rows.append((label, run_variant(model, args, "absent", src)))
        for chunk in ("None", "1024", "256", "64"):
            label = f"logits_chunk_size={chunk}"
            rows.append((label, run_variant(model, args, chunk, ROOT)))

    tokens = args.batch * (args.prompt + args.completion)
    print(
        f"Learner.step peak memory: vocab {VOCAB:,}, hidden {args.hidden}, {args.layers} "
        f"layers, {args.batch} x ({args.prompt} prompt + {args.completion} completion) = "
        f"{tokens:,} tokens; one full-logits copy = {tokens * VOCAB * 4 / 2**20:,.0f} MiB"
    )
    base = next((r["delta"] for _, r in rows if r is not None), None)
    print(f"| {'variant':<44} | {'peak above start':>16} | {'ratio':>6} | {'step s':>6} | loss |")
    print(f"|{'-' * 46}|{'-' * 18}|{'-' * 8}|{'-' * 8}|------|")
    for label, r in rows:
        if r is None:
            print(f"| {label:<44} | {'failed':>16} | {'':>6} | {'':>6} |      |")
            continue
        ratio = r["delta"] / base if base else float("nan")
        print(
            f"| {label:<44} | {r['delta'] / 2**20:>12,.0f} MiB | {ratio:>6.2f} "
            f"| {r['seconds']:>6.1f} | {r['loss']:.4f} |"
        )


if __name__ == "__main__":
    main()
