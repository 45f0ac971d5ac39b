"""Build the tiny warm-started Countdown policy (see ``langrl.tiny.warmstart``).

Without ``--out`` the policy goes to the shared cache (``$LANGRL_HOME``, default
``~/.cache/langrl``) where ``ensure_policy`` and every agent find it; with ``--out`` it is
written to that folder instead (overwriting model files there). Run from the repo root:

    python scripts/build_tiny_policy.py                       # the default policy, 10-20 min
    python scripts/build_tiny_policy.py --preset test         # the test policy, seconds
    python scripts/build_tiny_policy.py --out /tmp/tiny --steps 400 --imperfect-fraction 0.2

Any option that changes the config (``--steps``, ...) gets its own cache folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from langrl.tiny.warmstart import POLICY_CONFIGS, RECORD_FILE, build_policy, ensure_policy


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--preset",
        default="default",
        choices=sorted(POLICY_CONFIGS),
        help="which WarmStartConfig to start from (default: %(default)s)",
    )
    parser.add_argument("--out", default=None, help="write here instead of the $LANGRL_HOME cache")
    parser.add_argument("--steps", type=int, default=None, help="AdamW steps")
    parser.add_argument("--batch-size", type=int, default=None, help="traces per step")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate")
    parser.add_argument(
        "--imperfect-fraction",
        type=float,
        default=None,
        help="share of deliberately imperfect traces, in [0, 1]",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed (init, data, mistakes)")
    parser.add_argument(
        "--num-threads", type=int, default=None, help="torch threads while training (default 2)"
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    overrides = {
        name: value
        for name, value in (
            ("steps", args.steps),
            ("batch_size", args.batch_size),
            ("lr", args.lr),
            ("imperfect_fraction", args.imperfect_fraction),
            ("seed", args.seed),
            ("num_threads", args.num_threads),
        )
        if value is not None
    }
    config = dataclasses.replace(POLICY_CONFIGS[args.preset], **overrides)
    print(json.dumps(dataclasses.asdict(config), indent=1))
    started = time.perf_counter()
    if args.out is None:
        path = ensure_policy(args.preset, config)
    else:
        path = build_policy(args.out, config)
    record = json.loads((path / RECORD_FILE).read_text())
    losses = record["losses"]
    print(
        f"policy: {path}\n"
        f"loss {losses[0]:.3f} -> {losses[-1]:.3f} over {len(losses)} steps; "
        f"built in {record['build_seconds']:.0f}s "
        f"(this call {time.perf_counter() - started:.0f}s); traces {record['kinds']}"
    )


if __name__ == "__main__":
    main()
