"""Resident memory of the engine's processes under pushes, generation, or both in turn.

Issue 18's soak (a 60-minute CISPO run) saw vLLM's worker grow about 7 MB/min. This starts
one real vLLM engine on the tiny default policy and repeats a round of work, printing the
RSS of every process of this trainer (by ``LANGRL_OWNER``: the trainer, EngineCore, worker)
and the size of the worker's glibc ``[heap]`` every ``--every`` rounds, so that the source
of growth can be told apart:

- ``push``: a full weight push per round, no generation;
- ``gen``: one round of ``--prompts`` x n=4 x 48 seeded samples, no push;
- ``both``: a push then a generation round (what training does).

    nice -n 19 .venv/bin/python benchmarks/bench_engine_memory.py both --rounds 160 --every 20

Measured 2026-12-03 (2 cores): ``push`` x 400 and ``gen`` x 120 level off; ``both`` kept
growing (worker 1430 MB at round 60, 1682 MB at 160): the worker's heap, fragmented by
weights and generation temporaries in turn. With pushes served by mmap
(``langrl.engine.malloc``): worker 1470 MB at round 60, 1531 MB at 160 (``MALLOC_ARENA_MAX=2``
instead: 1587 MB already at round 80).
"""

from __future__ import annotations

import argparse
import os
import time

from langrl.engine import EngineConfig, SamplingConfig, create_engine


def rss_by_process(token: str) -> dict[str, int]:
    """MB resident per process name, over the processes carrying ``token``."""
    out: dict[str, int] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if f"LANGRL_OWNER={token}".encode() not in f.read() and int(pid) != os.getpid():
                    continue
            with open(f"/proc/{pid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/status") as f:
                rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
        except (OSError, StopIteration):
            continue
        out[name] = out.get(name, 0) + rss // 1024
    return out


def heap_mb(name: str, token: str) -> int:
    """MB resident in the ``[heap]`` of the first process called ``name`` with ``token``."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() != name:
                    continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                if f"LANGRL_OWNER={token}".encode() not in f.read():
                    continue
            with open(f"/proc/{pid}/smaps") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for i, line in enumerate(lines):
            if line.endswith("[heap]"):
                rss = next(x for x in lines[i + 1 :] if x.startswith("Rss:"))
                return int(rss.split()[1]) // 1024
        return 0
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("push", "gen", "both"))
    parser.add_argument("--rounds", type=int, default=160)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--prompts", type=int, default=32)
    args = parser.parse_args()

    from langrl.engine.common import tied_parameter_names
    from langrl.policy_model import PolicyValueModel
    from langrl.tiny import ensure_policy

    model = str(ensure_policy("default"))
    engine = create_engine(EngineConfig(model=model, enforce_eager=True, kv_cache_gib=0.5))
    try:
        token = os.environ["LANGRL_OWNER"]
        copy = PolicyValueModel.from_pretrained(model)
        aliases = tied_parameter_names(copy.lm)
        lm = {k: v.detach().clone() for k, v in copy.lm.state_dict().items() if k not in aliases}
        head = {k: v.detach().clone() for k, v in copy.value_head.state_dict().items()}
        tok = engine.tokenizer
        prompts = [
            tok(f"Numbers: {i % 13 + 1} {i % 7 + 2} {i % 5 + 3}\nTarget: {i + 10}\n")["input_ids"]
            for i in range(args.prompts)
        ]
        start = time.perf_counter()
        print(f"round 0: {rss_by_process(token)} worker heap {heap_mb('VLLM::Worker', token)} MB")
        for r in range(1, args.rounds + 1):
            if args.mode in ("push", "both"):
                engine.load_weights(lm, head)
            if args.mode in ("gen", "both"):
                engine.generate_many(prompts, SamplingConfig(n=4, max_tokens=48, seed=r))
            if r % args.every == 0:
                print(
                    f"round {r} ({time.perf_counter() - start:.0f} s): {rss_by_process(token)} "
                    f"worker heap {heap_mb('VLLM::Worker', token)} MB",
                    flush=True,
                )
    finally:
        engine.shutdown()


if __name__ == "__main__":
    main()
