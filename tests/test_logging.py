"""A quiet console by default, ``--verbose`` for the rest (``langrl.logging_setup``), and vLLM's
harmless reload warning kept off it (``langrl.engine.worker_extension``).

The fast tests check the set-up and the filter in this process. The slow ones run the real
engine in a child process (vLLM logs from its own engine-core and worker processes, which
only a child's whole console shows): a weight push on the quiet console, and
``scripts/evaluate.py --verbose``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from langrl import logging_setup
from langrl.engine import EngineConfig
from langrl.engine.worker_extension import RotaryCacheReloadFilter, install_reload_log_filter
from langrl.logging_setup import HF_BARS_VAR, VLLM_LEVEL_VAR, setup_logging

ROOT = Path(__file__).resolve().parent.parent
LAYERWISE = "vllm.model_executor.model_loader.reload.layerwise"
# A vLLM log line: "(EngineCore pid=123) INFO 12-03 11:45:12 [file.py:12] message".
VLLM_INFO = re.compile(r"^\((\S+) pid=\d+\) INFO ", re.MULTILINE)


@pytest.fixture
def clean_logging(monkeypatch: pytest.MonkeyPatch):
    """No user VLLM_LOGGING_LEVEL; the langrl logger and the module state put back after."""
    monkeypatch.delenv(VLLM_LEVEL_VAR, raising=False)
    monkeypatch.delenv(HF_BARS_VAR, raising=False)
    monkeypatch.setattr(logging_setup, "_we_set", {})
    logger = logging.getLogger("langrl")
    level, handlers = logger.level, list(logger.handlers)
    yield logger
    logger.setLevel(level)
    logger.handlers[:] = handlers


def test_quiet_by_default_and_verbose_restores_info(clean_logging, capsys) -> None:
    setup_logging()
    assert os.environ[VLLM_LEVEL_VAR] == "WARNING"
    assert os.environ[HF_BARS_VAR] == "1"  # no model-loading bars around ours
    assert clean_logging.level == logging.WARNING
    logging.getLogger("langrl.some.module").info("hidden")
    logging.getLogger("langrl.some.module").warning("shown")
    setup_logging(verbose=True)  # a second call replaces what the first set
    assert os.environ[VLLM_LEVEL_VAR] == "INFO" and HF_BARS_VAR not in os.environ
    logging.getLogger("langrl.some.module").info("now shown")
    err = capsys.readouterr().err
    assert "hidden" not in err and "shown" in err and "now shown" in err
    assert len(clean_logging.handlers) == 1 + sum(  # one handler of ours, however many calls
        not isinstance(h, logging_setup._StderrHandler) for h in clean_logging.handlers
    )


@pytest.mark.parametrize("verbose", [False, True])
def test_a_level_the_user_set_wins(clean_logging, monkeypatch, verbose) -> None:
    monkeypatch.setenv(VLLM_LEVEL_VAR, "DEBUG")
    monkeypatch.setenv(HF_BARS_VAR, "0")
    setup_logging(verbose)
    assert os.environ[VLLM_LEVEL_VAR] == "DEBUG" and os.environ[HF_BARS_VAR] == "0"


def test_scripts_set_up_the_console_before_importing_vllm(
    clean_logging, load_script, capsys
) -> None:
    # Bad arguments stop both scripts before anything imports vLLM; logging is set by then.
    assert load_script("evaluate").main(["--model", "/tmp", "--k", "0"]) == 2
    assert os.environ[VLLM_LEVEL_VAR] == "WARNING"
    assert load_script("train_agent").main(["--no_such_field", "1", "--verbose"]) == 2
    assert os.environ[VLLM_LEVEL_VAR] == "INFO"
    err = capsys.readouterr().err
    assert "no_such_field" in err and "verbose" not in err  # not taken as a config field
    args, overrides = load_script("train_agent").parse_args(["--verbose", "--lr", "1"])
    assert args.verbose and overrides == ["--lr", "1"]


def _emit(name: str, msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(name, logging.WARNING, __file__, 1, msg, args, None)


def test_reload_filter_drops_only_the_rotary_cache_warning() -> None:
    keep = RotaryCacheReloadFilter().filter
    assert not keep(_emit(LAYERWISE, "%s: Failed to load weights", "RotaryEmbedding"))
    # A layer with learned tensors that a push missed is a real problem: it still shows.
    assert keep(_emit(LAYERWISE, "%s: Failed to load weights", "FourierRotaryEmbedding"))
    assert keep(_emit(LAYERWISE, "%s: Failed to load weights", "QKVParallelLinear"))
    assert keep(_emit(LAYERWISE, "%s: Delayed processing", "RotaryEmbedding"))
    # Installed on import of the worker extension (vLLM's worker imports it), once.
    install_reload_log_filter()
    filters = logging.getLogger(LAYERWISE).filters
    assert sum(isinstance(f, RotaryCacheReloadFilter) for f in filters) == 1


def _run(args: list[str], timeout: float = 300) -> str:
    """Run a child Python with a console as a user's (no VLLM_LOGGING_LEVEL, no colour);
    its stdout and stderr together."""
    env = {k: v for k, v in os.environ.items() if k != VLLM_LEVEL_VAR}
    env["VLLM_LOGGING_COLOR"] = "0"
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    return proc.stdout


# Quiet console; push changed weights (every linear layer and norm, through the default
# push path); vLLM must then serve what the learner-side copy computes.
PUSH_PROGRAM = textwrap.dedent(
    """
    import json, sys
    from langrl.logging_setup import setup_logging
    setup_logging()
    import torch
    from langrl.engine import EngineConfig, SamplingConfig, create_engine
    from langrl.policy_model import PolicyValueModel

    config = EngineConfig(**json.loads(sys.argv[1]))
    model = PolicyValueModel.from_pretrained(config.model)
    engine = create_engine(config)
    try:
        g = torch.Generator().manual_seed(0)
        lm = {k: v.detach() + 0.05 * torch.randn(v.shape, generator=g)
              for k, v in model.lm.named_parameters()}  # a tied tensor once
        engine.load_weights(lm, model.value_head.state_dict())
        prompt = list(engine.tokenizer("3 5 7 2 -> 24: ", add_special_tokens=False)["input_ids"])
        out = engine.generate(prompt, SamplingConfig(n=2, max_tokens=16, temperature=1.0, seed=3))
        ref = engine.score(prompt, [s.token_ids for s in out.samples])
        gap = max(abs(a - b) for s, r in zip(out.samples, ref) for a, b in zip(s.logprobs, r))
        print(f"LOGPROB_GAP {gap}")
    finally:
        engine.shutdown()
    """
)


@pytest.mark.slow
@pytest.mark.timeout(600)  # a child process with an engine, given 300 s by _run
def test_weight_push_on_a_quiet_console(tiny_engine_config: EngineConfig) -> None:
    """No vLLM INFO line from any of its processes, no "RotaryEmbedding: Failed to load
    weights" at the push, and the pushed weights are served (the rotary cache the warning
    is about is not a weight and is left as it was)."""
    pytest.importorskip("vllm")
    out = _run(["-c", PUSH_PROGRAM, json.dumps(dataclasses.asdict(tiny_engine_config))])
    gap = float(re.search(r"^LOGPROB_GAP (\S+)$", out, re.MULTILINE).group(1))
    assert gap < 1e-3, f"served vs pushed logprob gap {gap:.1e}"
    assert not VLLM_INFO.findall(out), out[-4000:]
    assert "Failed to load weights" not in out, out[-4000:]


@pytest.mark.slow
@pytest.mark.timeout(600)  # a child process with an engine, given 300 s by _run
def test_evaluate_verbose_shows_vllm_info_from_every_process(tiny_policy_path: Path) -> None:
    pytest.importorskip("vllm")
    argv = ["--model", str(tiny_policy_path), "--num-problems", "1", "--k", "1"]
    out = _run(["scripts/evaluate.py", *argv, "--max-tokens", "8", "--quiet", "--verbose"])
    assert "mean@1" in out  # the result, as without --verbose
    processes = set(VLLM_INFO.findall(out))
    # The front end and the spawned engine core both log at INFO: the level reached the child.
    assert "MainProcess" in processes and any("EngineCore" in p for p in processes), processes
