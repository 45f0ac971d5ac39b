"""Build the tiny warm-started Countdown policy (see ``langrl.tiny.warmstart``).

Without ``--out`` the policy goes to the shared cache (``$LANGRL_HOME``, default
``~/.cache/langrl``) where ``ensure_policy`` and every agent find it; with ``--out`` it is
written to that folder instead (overwriting model files there). Run from the repo root:

    python scripts/build_tiny_policy.py                       # the default policy, into the cache
    python scripts/build_tiny_policy.py --preset test         # the test policy, seconds
    python scripts/build_tiny_policy.py --out /tmp/tiny --steps 400 --imperfect-fraction 0.2
    python scripts/build_tiny_policy.py --ship                # rebuild the shipped default policy
    python scripts/build_tiny_policy.py --check               # rebuild and compare with the shipped
    python scripts/build_tiny_policy.py --check DIR           # compare the build in DIR with it

Any option that changes the config (``--steps``, ...) gets its own cache folder. The
default policy ships with the package (``langrl/tiny/shipped-policies/tiny-default``), so
the cache gets a copy of it in a second instead of a 10-20 minute build; ``--ship``
rebuilds it from the current code (10-20 min on 2 cores) and replaces the shipped folder,
which is what to do after a change to ``POLICY_CONFIGS["default"]``, ``FORMAT_VERSION`` or
the training code.
``--check`` prints how a build differs from the shipped one (sha256 of each file, the largest
absolute weight difference, the loss curves) and exits 1 unless the weights are identical
(builds on another machine or torch build may differ in the last bits).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from langrl.tiny.warmstart import (
    POLICY_CONFIGS,
    RECORD_FILE,
    SHIPPED_POLICIES,
    WarmStartConfig,
    build_policy,
    ensure_policy,
    file_hashes,
)

_REBUILD = "rebuild"  # --check without a folder: rebuild, then compare


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
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--ship",
        action="store_true",
        help="rebuild the default policy into langrl/tiny/shipped-policies (10-20 min)",
    )
    mode.add_argument(
        "--check",
        nargs="?",
        const=_REBUILD,
        default=None,
        metavar="DIR",
        help="compare the built policy in DIR (default: a fresh rebuild) with the shipped one",
    )
    args = parser.parse_args()
    learned = ("steps", "batch_size", "lr", "imperfect_fraction", "seed")
    if (args.ship or args.check) and (
        args.preset != "default" or args.out or any(getattr(args, a) is not None for a in learned)
    ):
        parser.error("--ship and --check build the default policy as configured: no overrides")
    return args


def _weights(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a policy folder's safetensors files, keyed ``file:tensor``."""
    return {
        f"{item.relative_to(path).as_posix()}:{key}": value
        for item in sorted(path.rglob("*.safetensors"))
        for key, value in load_file(str(item)).items()
    }


def compare(built: Path, shipped: Path) -> bool:
    """Print how ``built`` differs from ``shipped``; True when all their weights are equal."""
    records = [json.loads((p / RECORD_FILE).read_text()) for p in (built, shipped)]
    print(f"  config hash: {records[0]['config_hash']} (shipped {records[1]['config_hash']})")
    hashes_built, hashes_shipped = file_hashes(built), file_hashes(shipped)
    for name in sorted(set(hashes_built) | set(hashes_shipped)):
        same = hashes_built.get(name) == hashes_shipped.get(name)
        print(f"  {name}: {'same sha256' if same else 'DIFFERENT'}")
    weights_built, weights_shipped = _weights(built), _weights(shipped)
    if weights_built.keys() != weights_shipped.keys():
        print(f"  tensors differ: {sorted(weights_built.keys() ^ weights_shipped.keys())}")
        return False
    reshaped = [k for k in weights_shipped if weights_built[k].shape != weights_shipped[k].shape]
    if reshaped:
        print(f"  tensor shapes differ: {reshaped}")
        return False
    diffs = {
        key: (weights_built[key].double() - weights_shipped[key].double()).abs().max().item()
        for key in weights_shipped
    }
    worst = max(diffs, key=diffs.get)
    print(f"  max |weight difference|: {diffs[worst]:.3g} ({worst}); {len(diffs)} tensors")
    losses_built, losses_shipped = records[0]["losses"], records[1]["losses"]
    if len(losses_built) == len(losses_shipped):
        gap = max(abs(a - b) for a, b in zip(losses_built, losses_shipped, strict=True))
        print(f"  max |loss difference| over the {len(losses_built)} steps: {gap:.3g}")
    return diffs[worst] == 0.0


def ship(config: WarmStartConfig) -> Path:
    """Rebuild the default policy in a temporary folder and swap it in as the shipped one."""
    target = SHIPPED_POLICIES["default"]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build_policy(tmp, config)
        for item in (tmp, *tmp.rglob("*")):  # mkdtemp's folder is private (0o700)
            os.chmod(item, 0o755 if item.is_dir() else 0o644)
        if target.exists():
            shutil.rmtree(target)
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


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
    if args.check not in (None, _REBUILD):
        path = Path(args.check)
    elif args.check == _REBUILD:
        scratch = tempfile.TemporaryDirectory(prefix="tiny-default-check-")
        path = build_policy(scratch.name, config)
    elif args.ship:
        path = ship(config)
    elif args.out is None:
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
    if args.check is not None:
        shipped = SHIPPED_POLICIES["default"]
        print(f"compared with the shipped policy {shipped}:")
        if not compare(path, shipped):
            sys.exit("the weights differ from the shipped ones")
        print("identical weights")


if __name__ == "__main__":
    main()
