"""``scripts/train_agent.py --agent bon --engine.replicas 2`` from the command line leaves no
Ray or vLLM process behind, whether it ends normally, on Ctrl-C, on SIGTERM or on SIGKILL
(the reaper of ``langrl.engine.lifetime`` then kills the local Ray instance, whose actors'
own reapers kill their vLLM processes). Slow; runs in CI."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytest.importorskip("vllm")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
#: Command lines of the processes such a run starts: Ray's (GCS, raylet, workers and
#: actors, its helpers) and vLLM's (EngineCore, workers).
STARTED = re.compile(r"ray::|raylet|gcs_server|/ray/|VLLM|EngineCore|log_monitor")


def processes() -> dict[int, str]:
    """pid -> command line of the running processes that look like Ray's or vLLM's."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as f:
                if f.read().rpartition(")")[2].split()[0] == "Z":  # a zombie has ended
                    continue
        except OSError:
            continue
        if STARTED.search(cmdline):
            found[int(entry)] = cmdline[:120]
    return found


#: Put in the trainer's environment by each test run; everything the run starts inherits it.
RUN_MARK = "LANGRL_TEST_RUN"


def another_runs(pid: int, mark: str) -> bool:
    """Whether ``pid`` belongs to another langrl run on this machine (a benchmark, a second
    test session): it carries an ownership token (``LANGRL_OWNER``) but not this run's
    ``RUN_MARK``. A process without a token still counts as this run's, so an escape that
    lost its environment is not missed."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read().split(b"\0")
    except OSError:
        return False
    owned = any(e.startswith(b"LANGRL_OWNER=") for e in environ)
    return owned and f"{RUN_MARK}={mark}".encode() not in environ


def left_behind(before: dict[int, str], timeout_s: float, mark: str) -> dict[int, str]:
    """Processes started since ``before`` still running after up to ``timeout_s``, other
    runs' excepted (a benchmark or a second test session on the same machine)."""
    deadline = time.monotonic() + timeout_s
    while True:
        new = {
            p: c for p, c in processes().items() if p not in before and not another_runs(p, mark)
        }
        if not new or time.monotonic() > deadline:
            return new
        time.sleep(0.5)


def _default_sigint() -> None:
    # A test runner started in the background ignores SIGINT, and children inherit that:
    # restore it, or Ctrl-C would not reach the trainer's handler.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("ending", ["normal", "ctrl-c", "sigterm", "sigkill"])
def test_two_replicas_from_the_cli_leave_nothing_behind(ending, tiny_policy_path, tmp_path):
    before = processes()
    steps = "2" if ending == "normal" else "1000"
    cmd = [
        sys.executable, str(ROOT / "scripts" / "train_agent.py"), "--agent", "bon",
        "--engine.replicas", "2", "--model", str(tiny_policy_path),
        "--total_steps", steps, "--batch_size", "4", "--bon.num_prompts", "4", "--bon.n", "4",
        "--bon.max_tokens", "48", "--eval.num_problems", "4", "--eval.k", "2",
        "--eval.max_tokens", "48", "--eval_every", "0", "--checkpoint_every", "0",
        "--engine.enforce_eager", "true", "--engine.kv_cache_gib", "0.5",
        "--run_dir", str(tmp_path / "run"),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "LANGRL_OWNER"}  # its own token
    mark = env[RUN_MARK] = uuid.uuid4().hex
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        preexec_fn=_default_sigint,
    )  # fmt: skip
    output: list[str] = []
    reader = threading.Thread(
        target=lambda: output.extend(
            iter(lambda: proc.stdout.read(256).decode(errors="replace"), "")
        ),
        daemon=True,
    )
    reader.start()
    try:
        if ending == "normal":
            assert proc.wait(timeout=600) == 0, "".join(output)[-3000:]
            assert "done: step 2" in "".join(output)
        else:
            deadline = time.monotonic() + 600
            while "train bon" not in "".join(output):  # the loop runs: replicas serve
                assert proc.poll() is None, "".join(output)[-3000:]
                assert time.monotonic() < deadline, "training did not start"
                time.sleep(0.5)
            time.sleep(3)  # mid-rollout
            sig = {"ctrl-c": signal.SIGINT, "sigterm": signal.SIGTERM, "sigkill": signal.SIGKILL}
            proc.send_signal(sig[ending])
            code = proc.wait(timeout=180)
            if ending != "sigkill":  # the interrupt path: a checkpoint, exit 130
                assert code == 130, "".join(output)[-3000:]
                assert (tmp_path / "run" / "checkpoints" / "latest").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
    # Ended normally or interrupted: shut down already; killed: the reapers' few seconds.
    leftover = left_behind(before, timeout_s=30, mark=mark)
    assert leftover == {}, leftover
