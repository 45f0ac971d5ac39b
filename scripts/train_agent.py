"""Train an agent on a reasoning env: a thin CLI over ``langrl.training.train``.

    python scripts/train_agent.py --agent mcts                 # tiny policy, Countdown, CPU
    python scripts/train_agent.py --agent cispo --total_steps 50 --learner.lr 3e-4
    python scripts/train_agent.py --agent bon --config configs/qwen2.5-1.5b-paper.yaml
    python scripts/train_agent.py --agent mcts --resume        # continue the newest run
    tensorboard --logdir runs/

Flags: ``--agent`` (``mcts``, ``cispo``, ``bon``, or ``module:ClassName`` for an agent of
your own, see ``langrl.agents.base.Agent``), ``--config`` (YAML preset; default
``configs/tiny_cpu.yaml``), ``--env`` (an id, or ``module:EnvId-v0`` to import a module that
registers your own env), ``--model`` (local directory or Hugging Face name; default: the
tiny policy shipped with langrl), ``--resume``, ``--verbose`` (vLLM's INFO lines and
langrl's INFO logs; the default console shows progress, results and warnings), and any
config field as ``--key value`` or ``--section.key value`` (sections: engine, learner, eval,
and the agent's: mcts, cispo, bon, or your agent's ``name``). A bad field is reported in
one line before anything starts.
"""

from __future__ import annotations

import argparse
import sys

# langrl imports wait inside main(): --help pays for none of them, and the training loop's
# (torch, transformers, vLLM: seconds) load only once the config is valid.


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """Known flags, and the rest as config overrides. Prefix matching is off: with it,
    ``--mode sync`` was taken as ``--model sync`` (any unique prefix of a flag matched)."""
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        description="Train an agent (mcts, cispo, bon, or module:ClassName) with langrl.",
        epilog="Any config field: --key value or --section.key value "
        "(sections: engine, learner, eval, and the agent's: mcts, cispo, bon, or its name).",
    )
    parser.add_argument("--agent", help="mcts | cispo | bon | module:ClassName (default: preset's)")
    parser.add_argument("--config", help="YAML preset (default: configs/tiny_cpu.yaml)")
    parser.add_argument("--env", dest="env_id",
                        help="env id (Countdown-v0, GSM8K-v0) or module:EnvId-v0 for your own")  # fmt: skip
    parser.add_argument("--model", help="local model directory or Hugging Face name")
    parser.add_argument("--resume", action="store_true", default=None,
                        help="continue from the last checkpoint of the run")  # fmt: skip
    # A flag, not a config field (so never a --key value override): it sets up logging.
    parser.add_argument("--verbose", action="store_true",
                        help="also show vLLM's INFO lines and langrl's INFO logs")  # fmt: skip
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    from langrl.logging_setup import setup_logging

    setup_logging(args.verbose)  # before anything imports vLLM: its processes inherit the level
    from langrl.training.config import DEFAULT_PRESET, ConfigError, load_config

    try:
        config = load_config(
            args.config or DEFAULT_PRESET,
            overrides,
            agent=args.agent,
            env_id=args.env_id,
            model=args.model,
            resume=args.resume,
        )
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from langrl.distributed.cluster import ClusterError
    from langrl.engine import EngineStartError
    from langrl.learner import CheckpointError
    from langrl.signals import interrupt_on_sigterm
    from langrl.training import train  # heavy imports only once the config is valid

    interrupt_on_sigterm()  # `kill` saves a checkpoint and stops the engine, as Ctrl-C does
    try:
        result = train(config)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (CheckpointError, EngineStartError, ClusterError) as err:
        # A final save failed (full disk), the engine or a replica did not start, Ray could
        # not be started or joined: one line, exit 1.
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    evals = " ".join(f"{k}={v:.4f}" for k, v in result.items() if k.startswith("eval/"))
    print(f"done: step {result['step']} {evals} run_dir={result['run_dir']}")
    return 0


if __name__ == "__main__":  # vLLM spawns processes: keep the guard
    sys.exit(main())
