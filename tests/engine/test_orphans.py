"""Nothing outlives the trainer (``langrl.engine.lifetime``), and its shared memory goes too.

- The sweep: a dead owner's chunk file is removed at start-up, a live owner's is kept (and
  so are files of another pid namespace and names that are not langrl's).
- The reaper with plain ``sleep`` children (fast): a fake trainer acquires a reaper, starts
  children (one in a session of its own) and writes an owned file; after ``kill -9`` of the
  trainer its children and its file are gone, while a bystander and a process of another
  run (another token) live on. A trainer that releases its reaper leaves none behind.
- A real trainer (slow): ``scripts/train_agent.py`` with the real vLLM engine is killed
  with SIGKILL (the out-of-memory killer's signal), if it can be caught so, in the middle of
  a weight push; every process carrying its token (vLLM's EngineCore and Worker) must be
  gone, and no shared-memory file of it left: neither its weight chunks nor the ``psm_*``
  queues its processes held.

Bounds are generous guards (``GONE_WITHIN_S``), not measurements; the measured times are
printed (``-s``) and the reaper's own line is in the trainer's log.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from langrl.engine import lifetime

pytestmark = pytest.mark.skipif(not lifetime.supported(), reason="needs Linux /proc")

ROOT = Path(__file__).resolve().parents[2]
#: How long the processes of a killed trainer may take to disappear before the test fails
#: (a guard against a hang; the reaper takes well under a second when the machine is idle).
GONE_WITHIN_S = 60.0


def _wait_for(condition: Callable[[], object], timeout_s: float, what: str) -> object:
    deadline = time.monotonic() + timeout_s
    while not (result := condition()):
        assert time.monotonic() < deadline, f"not within {timeout_s:g} s: {what}"
        time.sleep(0.05)
    return result


def _alive(pid: int) -> bool:
    stat = lifetime.process_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(OSError):
        proc.kill()
    proc.wait()


# --- the sweep ---


def test_sweep_removes_dead_owners_files_only(tmp_path: Path) -> None:
    me = lifetime.process_token()
    ns = lifetime.pid_namespace()
    pid, start = (int(x) for x in me.split("-"))
    # A pid that ran and is gone: a short child, waited for.
    gone = subprocess.Popen(["true"])
    gone_start = lifetime.process_start_time(gone.pid)
    gone.wait()
    names = {
        "live": f"langrl-weights-{pid}-{start}-{ns}-abc",
        # this pid, another start time: a dead process whose pid was reused
        "reused": f"langrl-weights-{pid}-{start + 1}-{ns}-abc",
        "gone": f"langrl-weights-{gone.pid}-{gone_start or 1}-{ns}-abc",
        "other_ns": f"langrl-weights-{gone.pid}-{gone_start or 1}-{ns + 1}-abc",
        "legacy": "langrl-weights-k2j4h5",  # no owner in the name: never judged
        "foreign": "psm_0123abcd",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"x")
    removed = lifetime.sweep_files([str(tmp_path)])
    assert sorted(os.path.basename(p) for p in removed) == sorted([names["reused"], names["gone"]])
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {names["live"], names["other_ns"], names["legacy"], names["foreign"]}
    # The reaper's call: every file of one (dead) owner, whatever the rest.
    removed = lifetime.sweep_files([str(tmp_path)], token=me)
    assert [os.path.basename(p) for p in removed] == [names["live"]]


def test_chunk_files_carry_their_owner(tmp_path: Path) -> None:
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed")
    import torch

    from langrl.engine.weight_transfer import sweep_stale_chunks, write_chunk

    info = write_chunk({"w": torch.ones(4)}, ["w"], str(tmp_path))
    try:
        name = os.path.basename(info["path"])
        owner = lifetime.file_owner(name)
        assert owner is not None and name.startswith("langrl-weights-"), name
        assert f"{owner[0]}-{owner[1]}" == lifetime.process_token()
        sweep_stale_chunks()  # its owner lives: kept
        assert os.path.exists(info["path"])
    finally:
        os.unlink(info["path"])


# --- the reaper, with plain sleep children ---

FAKE_TRAINER = textwrap.dedent(
    """
    import os, subprocess, sys, tempfile, time
    from langrl.engine import lifetime

    shm, mode = sys.argv[1], sys.argv[2]
    supervision = lifetime.acquire([shm])
    kids = [
        subprocess.Popen(["sh", "-c", "sleep 600 & sleep 600"]),  # and a grandchild
        subprocess.Popen(["sleep", "601"], start_new_session=True),  # its own session
    ]
    fd, path = tempfile.mkstemp(prefix=lifetime.owned_file_prefix("weights"), dir=shm)
    if mode == "release":  # as at an engine's shutdown; the children are left running
        supervision.release()
        os.unlink(path)
        print("released", flush=True)
        sys.exit(0)
    print("ready", flush=True)
    time.sleep(600)
    """
)


def _fake_trainer(tmp_path: Path, mode: str) -> tuple[subprocess.Popen, Path]:
    log = tmp_path / f"trainer-{mode}.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(lifetime.ENV_VAR, None)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", FAKE_TRAINER, str(tmp_path), mode],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    return proc, log


def test_reaper_kills_a_dead_trainers_children_and_files(tmp_path: Path) -> None:
    other_run = {**os.environ, lifetime.ENV_VAR: "1-1"}  # another trainer's token
    bystander = subprocess.Popen(["sleep", "600"])
    other = subprocess.Popen(["sleep", "600"], env=other_run)
    trainer, log = _fake_trainer(tmp_path, "crash")
    try:
        _wait_for(lambda: "ready" in log.read_text(), 120, "the fake trainer started")
        token = lifetime.process_token(trainer.pid)
        # sh, its two sleeps, the sleep in its own session
        _wait_for(lambda: len(lifetime.owned_pids(token)) == 4, 30, "4 children")
        kids = lifetime.owned_pids(token)
        assert list(tmp_path.glob(f"langrl-weights-{token}-*"))
        trainer.kill()
        trainer.wait()
        t0 = time.monotonic()
        _wait_for(
            lambda: not lifetime.owned_pids(token) and not any(_alive(pid) for pid in kids),
            GONE_WITHIN_S,
            "children gone",
        )
        print(f"sleep children gone {time.monotonic() - t0:.2f} s after kill -9")
        _wait_for(lambda: not list(tmp_path.glob(f"langrl-weights-{token}-*")), 10, "file removed")
        assert _alive(bystander.pid) and _alive(other.pid)
        _wait_for(lambda: "langrl reaper: trainer" in log.read_text(), 10, "the reaper's line")
        print(log.read_text().strip().splitlines()[-1])
    finally:
        for proc in (trainer, bystander, other):
            _kill(proc)


def test_released_reaper_stops_and_kills_nothing(tmp_path: Path) -> None:
    trainer, log = _fake_trainer(tmp_path, "release")
    token = lifetime.process_token(trainer.pid)
    try:
        assert trainer.wait(120) == 0, log.read_text()
        kids = lifetime.owned_pids(token)
        assert len(kids) >= 2, kids
        # Its reaper was stopped with it (not orphaned), and a reaper would have killed the
        # children within this second; a released one must not.
        time.sleep(1.0)
        reapers = [
            pid
            for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
            if f"lifetime.py {trainer.pid} " in _cmdline(pid)
        ]
        assert not reapers and "langrl reaper" not in log.read_text()
        assert all(_alive(pid) for pid in kids)
    finally:
        _kill(trainer)
        for pid in lifetime.owned_pids(token):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


# --- a real trainer, killed with SIGKILL ---


def _shm_held(pids: list[int], shm: str) -> set[str]:
    """The files under ``shm`` that ``pids`` map or have open."""
    held: set[str] = set()
    for pid in pids:
        held |= lifetime._shm_held(pid, shm)
    return held


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_killed_trainer_leaves_no_process_or_shm(tmp_path: Path, tiny_policy_path: Path) -> None:
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed (run scripts/setup.sh)")
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    log = tmp_path / "train.log"
    cmd = [
        sys.executable, str(ROOT / "scripts" / "train_agent.py"), "--agent", "cispo",
        "--model", str(tiny_policy_path), "--total_steps", "50", "--mode", "sync",
        "--run_dir", str(tmp_path / "run"), "--batch_size", "4", "--sync_every", "1",
        "--eval_every", "0", "--checkpoint_every", "0", "--progress", "false",
        "--cispo.num_prompts", "2", "--cispo.group_size", "4", "--cispo.max_tokens", "32",
        "--cispo.filter_zero_variance", "false", "--learner.micro_batch_size", "8",
        "--engine.kv_cache_gib", "0.25", "--engine.max_num_seqs", "8",
        "--engine.weight_push", "shm",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != lifetime.ENV_VAR}
    with open(log, "wb") as out:
        trainer = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    token = lifetime.process_token(trainer.pid)
    chunk_prefix = f"langrl-weights-{token}-"

    def engine_up() -> list[int]:
        assert trainer.poll() is None, log.read_text()[-3000:]
        pids = lifetime.owned_pids(token)
        titles = [_cmdline(pid) for pid in pids]
        if any(t.startswith("VLLM::EngineCore") for t in titles) and any(
            t.startswith("VLLM::Worker") for t in titles
        ):
            return pids
        return []

    try:
        _wait_for(engine_up, 400, "vLLM's EngineCore and Worker carry the trainer's token")
        # Kill it in the middle of a weight push if one is caught within a while (the chunk
        # file exists for tens of ms per push; a push follows every step here).
        mid_push = False
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and trainer.poll() is None:
            if any(n.startswith(chunk_prefix) for n in os.listdir(shm)):
                mid_push = True
                break
            time.sleep(0.001)
        pids = lifetime.owned_pids(token)
        held = _shm_held([trainer.pid, *pids], shm)
        titles = {pid: _cmdline(pid).split(" ")[0] for pid in pids}
        assert trainer.poll() is None, log.read_text()[-3000:]
        trainer.send_signal(signal.SIGKILL)
        t0 = time.monotonic()
        trainer.wait()
        # Gone: none carries the token (their memory is freed), none has not exited.
        _wait_for(
            lambda: not lifetime.owned_pids(token) and not any(_alive(pid) for pid in pids),
            GONE_WITHIN_S,
            "the trainer's processes gone",
        )
        gone_s = time.monotonic() - t0

        def shm_left() -> list[str]:
            left = [n for n in os.listdir(shm) if n.startswith(chunk_prefix)]
            return left + [p for p in held if os.path.exists(p)]

        _wait_for(lambda: not shm_left(), 20, f"no shm file left: {shm_left()}")
        reaper_line = _wait_for(
            lambda: [ln for ln in log.read_text().splitlines() if "langrl reaper:" in ln],
            20,
            "the reaper's report in the trainer's log",
        )
        print(
            f"\nkill -9 {'mid-push' if mid_push else 'between pushes'}; "
            f"{len(pids)} processes ({', '.join(sorted(set(titles.values())))}) gone "
            f"{gone_s:.2f} s after it; shm files held: {sorted(held)}\n{reaper_line[0]}"
        )
    finally:
        for pid in lifetime.owned_pids(token):  # the test's own clean-up, if it failed
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        _kill(trainer)
