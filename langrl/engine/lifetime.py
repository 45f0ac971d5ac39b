"""Nothing outlives the trainer: an ownership token, a reaper process, and shm file names.

A trainer killed by SIGKILL, the out-of-memory killer or a crash in native code runs no
clean-up of its own, and vLLM 0.32's EngineCore and ``VLLM::Worker`` processes then keep
running (reparented to init, each spinning part of a core; on a GPU holding its memory),
and the chunk files of a weight push stay in ``/dev/shm``. The mechanism here needs nothing
from vLLM and nothing from the processes it guards:

- **An ownership token.** ``ensure_owner_env()`` sets ``LANGRL_OWNER=<pid>-<start>`` (this
  process's pid and its start time in clock ticks since boot, field 22 of
  ``/proc/<pid>/stat``, so a reused pid never matches) in this process's environment, once,
  before the engine starts its processes. Every process started from then on inherits it:
  vLLM's EngineCore (spawned), its workers (spawned by the EngineCore), anything they start,
  and a local Ray cluster started by ``ray.init()``. Ray actors on other nodes get it
  explicitly: ``runtime_env={"env_vars": owner_env()}``. A process that must outlive the
  trainer on purpose should be started without it (``env={k: v ... if k != ENV_VAR}``).
  The token names one process, so it never matches another run's processes nor the user's.
  A process started with a cleared environment escapes (vLLM's do not clear it).
- **A reaper.** When the first engine starts (``acquire()``) the trainer starts a small
  process, this module run as a script (standard library only, so it starts in
  milliseconds), in a session of its own (no terminal signal reaches it). It waits for the
  trainer to exit: ``pidfd_open`` and ``poll`` (Linux >= 5.3), else a check of the pid and its
  start time every 0.2 s. When the trainer is gone it SIGKILLs every process whose
  ``/proc/<pid>/environ`` carries the token (through a pidfd where there is one, so a pid
  reused in between is never signalled), scanning again until none is left, and removes the
  trainer's shared-memory files (below). The trainer stops its reaper (SIGTERM) when its
  last engine shuts down (``release()``); a reaper whose trainer exits first finds nothing
  left to kill after a clean exit and just exits.
- **Shared-memory names.** Files langrl writes in ``/dev/shm`` (the weight-push chunks) are
  named ``langrl-<kind>-<pid>-<start>-<pidns>-<random>`` (``owned_file_prefix``): owner pid,
  its start time and its pid namespace (with ``--ipc=host`` two containers share
  ``/dev/shm`` but not pids: a file of another namespace is never judged). Their owner is
  the process that writes them (the trainer). ``sweep_files`` removes those whose owner is
  dead; the engine runs it when it starts, and the reaper for its trainer's files. The
  reaper also removes the ``/dev/shm`` files the killed processes had mapped or open
  (vLLM's ``psm_*`` message queues, ``sem.mp-*`` semaphores) once no live process holds
  them (a SIGKILL'd trainer's ``multiprocessing`` resource tracker, which would have
  removed them, carries the token too).

Why not the alternatives: a parent-death signal (``PR_SET_PDEATHSIG``) must be set inside
each child (vLLM's code), fires when the parent *thread* exits, and does not reach
grandchildren; a watchdog thread inside each child is vLLM's code too; a process group
dies with a signal only if someone is alive to send it, and vLLM's processes may change
group. A cgroup would be the kernel's own answer but needs privileges or systemd. The
environment is inherited by every kind of child, survives reparenting, and is readable
from ``/proc`` by the same user.

Linux only (``/proc``); elsewhere ``acquire()`` starts nothing and says so in the log.
This module imports only the standard library: the reaper runs it by path (``python -I -S
lifetime.py``), without importing langrl.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable

logger = logging.getLogger(__name__)

#: The environment variable that marks a process as started by one trainer.
ENV_VAR = "LANGRL_OWNER"
#: Tells setproctitle not to write titles over the environment (``ensure_owner_env``).
SPT_NOENV = "SPT_NOENV"
#: Seconds between two checks of the trainer where ``pidfd_open`` is missing.
POLL_INTERVAL_S = 0.2
#: Seconds the reaper keeps killing (new processes may appear while it does).
KILL_DEADLINE_S = 30.0
#: The names of the shared-memory files the reaper removes after the processes that held
#: them died, if no live process holds them: Python's ``multiprocessing.shared_memory``
#: segments (vLLM's message queues) are ``psm_*``, its named semaphores (spawn context)
#: ``sem.mp-*``; both are random per creation and left behind by a SIGKILL.
RECLAIMABLE = re.compile(r"^(psm_|sem\.mp-|langrl-)")

_OWNED_FILE = re.compile(r"^langrl-[a-z]+-(\d+)-(\d+)-(\d+)-")


# --- processes ---


def process_stat(pid: int) -> tuple[str, int] | None:
    """``(state, start time in clock ticks since boot)`` of ``pid``, or ``None`` if none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces and parentheses.
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return fields[0].decode(), int(fields[19])
    except (IndexError, ValueError):
        return None


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` (clock ticks since boot), or ``None`` if there is no such pid."""
    stat = process_stat(pid)
    return None if stat is None else stat[1]


def is_alive(pid: int, start: int) -> bool:
    """Whether the process that was ``pid`` started at ``start`` still runs (not a zombie,
    not a new process under a reused pid)."""
    stat = process_stat(pid)
    return stat is not None and stat[1] == start and stat[0] not in ("Z", "X", "x")


def pid_namespace() -> int:
    """Inode of this process's pid namespace (0 where it cannot be read)."""
    try:
        return int(re.sub(r"\D", "", os.readlink("/proc/self/ns/pid")) or 0)
    except OSError:
        return 0


def process_token(pid: int | None = None) -> str:
    """``<pid>-<start time>`` of ``pid`` (default: this process)."""
    pid = os.getpid() if pid is None else pid
    start = process_start_time(pid)
    if start is None:
        raise ProcessLookupError(f"no process {pid} in /proc")
    return f"{pid}-{start}"


def supported() -> bool:
    """Whether processes can be told by ``/proc`` (Linux)."""
    return os.path.isfile(f"/proc/{os.getpid()}/environ")


def ensure_owner_env() -> str:
    """Mark this process's future children as its own: set ``LANGRL_OWNER`` to this
    process's token (replacing one inherited from a parent) and return the token."""
    token = process_token()
    if os.environ.get(ENV_VAR) != token:
        os.environ[ENV_VAR] = token
    # setproctitle (Ray's processes, vLLM's) writes a title longer than the command line
    # over the environment block that /proc/<pid>/environ reads: the token would vanish
    # and the process escape the reaper (seen: Ray's DashboardAgent and RuntimeEnvAgent
    # outlived a SIGKILLed trainer by a minute). With SPT_NOENV set it leaves it alone.
    os.environ.setdefault(SPT_NOENV, "1")
    return token


def owner_env() -> dict[str, str]:
    """``{ENV_VAR: token}`` for processes started elsewhere on this trainer's behalf (Ray
    actors: ``runtime_env={"env_vars": owner_env()}``) so that the reaper finds them."""
    return {ENV_VAR: ensure_owner_env()}


def _environ_has(pid: int, needle: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            data = f.read()
    except OSError:  # gone, or another user's
        return False
    return needle in b"\0" + data


def owned_pids(token: str, exclude: Iterable[int] = ()) -> list[int]:
    """Pids of the live processes whose environment carries ``LANGRL_OWNER=<token>``
    (a zombie's environment reads empty: it is not listed)."""
    needle = f"\0{ENV_VAR}={token}\0".encode()
    skip = set(exclude)
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for name in entries:
        if name.isdigit() and int(name) not in skip and _environ_has(int(name), needle):
            found.append(int(name))
    return found


def _title(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().split(b"\0")
        return cmd[0].decode(errors="replace").split()[0] or "?"
    except (OSError, IndexError):
        return "?"


def _kill(pid: int, needle: bytes, shm_dir: str | None, held: set[str]) -> int | None | bool:
    """SIGKILL ``pid`` if it still carries ``needle`` (first adding the files under
    ``shm_dir`` it holds to ``held``); through a pidfd where possible, so that a pid reused
    between the check and the signal is never hit. Returns that pidfd (to wait on; the
    caller closes it), ``None`` if killed without one, ``False`` if not killed."""
    fd = None
    with contextlib.suppress(AttributeError, OSError):
        fd = os.pidfd_open(pid)
    try:
        if not _environ_has(pid, needle):  # checked after the pidfd pins the process
            raise ProcessLookupError(pid)
        if shm_dir:
            held |= _shm_held(pid, shm_dir)
        if fd is not None:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
        return fd
    except OSError:
        if fd is not None:
            os.close(fd)
        return False


def _wait_exited(victims: dict[int, tuple[int | None, int | None]], timeout_s: float) -> None:
    """Wait until every killed process (``{pid: (pidfd or None, start time)}``) has exited:
    a SIGKILL'd process lets go of its memory first and of its open files after, and only
    then may its files be judged unheld."""
    end = time.monotonic() + timeout_s
    poller = select.poll()
    fds = {fd for fd, _ in victims.values() if fd is not None}
    for fd in fds:
        poller.register(fd, select.POLLIN)
    while fds and (left := end - time.monotonic()) > 0:
        for fd, _ in poller.poll(int(left * 1000) + 1):
            poller.unregister(fd)
            fds.discard(fd)
    others = [(pid, start) for pid, (fd, start) in victims.items() if fd is None and start]
    while any(is_alive(pid, start) for pid, start in others) and time.monotonic() < end:
        time.sleep(0.01)


def _shm_held(pid: int, directory: str) -> set[str]:
    """Files under ``directory`` that ``pid`` maps or has open."""
    held: set[str] = set()
    prefix = directory.rstrip("/") + "/"
    with contextlib.suppress(OSError), open(f"/proc/{pid}/maps") as f:
        for line in f:
            path = line.split(maxsplit=5)[5:]
            if path and path[0].startswith(prefix):
                held.add(path[0].rstrip("\n").removesuffix(" (deleted)"))
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith(prefix):
                    held.add(target)
    return held


def _held_by_anyone(paths: set[str], directory: str) -> set[str]:
    held: set[str] = set()
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if name.isdigit():
                held |= _shm_held(int(name), directory) & paths
    return held


def kill_owned(
    token: str, deadline_s: float = KILL_DEADLINE_S, shm_dir: str | None = None
) -> tuple[list[tuple[int, str]], set[str]]:
    """SIGKILL every process carrying ``token`` until none is left (or ``deadline_s``) and
    wait for them to exit; ``([(pid, title)], files under shm_dir they held)``."""
    needle = f"\0{ENV_VAR}={token}\0".encode()
    me = os.getpid()
    killed: dict[int, str] = {}
    victims: dict[int, tuple[int | None, int | None]] = {}  # pid: (pidfd, start time)
    held: set[str] = set()
    end = time.monotonic() + deadline_s
    try:
        while True:
            pids = owned_pids(token, exclude=(me,))
            if not pids or time.monotonic() > end:
                break
            for pid in pids:
                title, start = _title(pid), process_start_time(pid)
                fd = _kill(pid, needle, shm_dir, held)
                if fd is False:
                    continue
                killed.setdefault(pid, title)
                old = victims.get(pid, (None, None))[0]
                if old is not None:
                    os.close(old)
                victims[pid] = (fd, start)  # type: ignore[assignment]
            time.sleep(0.02)
        _wait_exited(victims, max(1.0, end - time.monotonic()))
    finally:
        for fd, _ in victims.values():
            if fd is not None:
                os.close(fd)
    return sorted(killed.items()), held


# --- shared-memory files ---


def owned_file_prefix(kind: str) -> str:
    """``langrl-<kind>-<pid>-<start>-<pidns>-``: the prefix of this process's files of one
    ``kind`` (lower-case letters), for ``tempfile.mkstemp(prefix=...)``."""
    if not re.fullmatch(r"[a-z]+", kind):
        raise ValueError(f"file kind must be lower-case letters, not {kind!r}")
    if not supported():  # no /proc: an owner could not be checked, so no owner is named
        return f"langrl-{kind}-"
    return f"langrl-{kind}-{process_token()}-{pid_namespace()}-"


def file_owner(name: str) -> tuple[int, int, int] | None:
    """``(pid, start, pidns)`` from an owned file's name, or ``None`` for any other name."""
    m = _OWNED_FILE.match(name)
    return None if m is None else (int(m[1]), int(m[2]), int(m[3]))


def sweep_files(directories: Iterable[str], token: str | None = None) -> list[str]:
    """Remove langrl's owned files (``owned_file_prefix``) in ``directories`` whose owner
    is dead, or with ``token`` those of that owner (dead or not: the reaper's call); return
    their paths. Files of another pid namespace are never touched, nor any without
    ``/proc`` (an owner's life could not be told)."""
    if not supported():
        return []
    ns = pid_namespace()
    removed = []
    for directory in dict.fromkeys(directories):
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            owner = file_owner(name)
            if owner is None or owner[2] != ns:
                continue
            pid, start, _ = owner
            if token is not None:
                if f"{pid}-{start}" != token:
                    continue
            elif is_alive(pid, start):
                continue
            path = os.path.join(directory, name)
            try:
                os.unlink(path)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    logger.warning("could not remove stale %s: %s", path, e.strerror)
                continue
            removed.append(path)
    return removed


# --- the reaper: the trainer's side ---

_lock = threading.Lock()
_reaper: subprocess.Popen[bytes] | None = None
_reaper_token: str | None = None
_users = 0


def _after_fork_in_child() -> None:
    # A forked child is another process: its parent's reaper is not its own.
    global _lock, _reaper, _reaper_token, _users
    _lock = threading.Lock()
    _reaper, _reaper_token, _users = None, None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Hold:
    """A counted hold on a shared resource: ``release()`` calls ``on_release`` once
    (idempotent). ``acquire()`` returns one for the reaper;
    ``langrl.distributed.cluster`` one for the run's Ray connection."""

    def __init__(self, on_release: Callable[[], None]) -> None:
        self._on_release: Callable[[], None] | None = on_release

    def release(self) -> None:
        on_release, self._on_release = self._on_release, None
        if on_release is not None:
            on_release()


def acquire(shm_dirs: Iterable[str] = ()) -> Hold:
    """Before starting processes: set the ownership token and make sure a reaper watches
    this process (started with the first user, stopped with the last ``release``). A reaper
    that cannot start is logged, not raised: the engine still runs, unguarded."""
    global _reaper, _reaper_token, _users
    with _lock:
        _users += 1
        if not supported():
            logger.info("no /proc here: the engine's processes are not guarded by a reaper")
            return Hold(_release)
        token = ensure_owner_env()
        if _reaper is not None and _reaper.poll() is None and _reaper_token == token:
            return Hold(_release)
        try:
            _reaper = start_reaper(token, shm_dirs)
            _reaper_token = token
        except OSError as e:
            logger.warning(
                "could not start the process reaper (%s): a crash may leave the engine's "
                "processes running",
                e,
            )
    return Hold(_release)


def _release() -> None:
    global _reaper, _users
    with _lock:
        _users = max(0, _users - 1)
        if _users or _reaper is None:
            return
        reaper, _reaper = _reaper, None
    stop_reaper(reaper)


def start_reaper(token: str, shm_dirs: Iterable[str] = ()) -> subprocess.Popen[bytes]:
    """Start a reaper for the process ``token`` names (normally this one)."""
    pid, start = token.split("-")
    cmd = [sys.executable, "-I", "-S", os.path.abspath(__file__), pid, start]
    for directory in dict.fromkeys(shm_dirs):
        cmd += ["--shm-dir", directory]
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}  # not a target itself
    return subprocess.Popen(cmd, env=env, cwd="/", stdin=subprocess.DEVNULL, start_new_session=True)


def stop_reaper(reaper: subprocess.Popen[bytes], timeout_s: float = 5.0) -> None:
    """Stop a reaper whose trainer lives on (nothing is killed)."""
    if reaper.poll() is not None:
        return
    with contextlib.suppress(OSError):
        reaper.terminate()
    try:
        reaper.wait(timeout_s)
    except subprocess.TimeoutExpired:
        reaper.kill()
        reaper.wait()


# --- the reaper: its own process ---


def wait_for_exit(pid: int, start: int) -> None:
    """Return once the process ``pid`` started at ``start`` has exited."""
    fd = None
    with contextlib.suppress(AttributeError, OSError):
        fd = os.pidfd_open(pid)
    if fd is not None:
        try:
            if is_alive(pid, start):  # the pidfd is the trainer's, not a reused pid's
                poller = select.poll()
                poller.register(fd, select.POLLIN)
                while not poller.poll():
                    pass
            return
        finally:
            os.close(fd)
    while is_alive(pid, start):
        time.sleep(POLL_INTERVAL_S)


def reap(token: str, shm_dirs: Iterable[str]) -> str:
    """Kill the processes of a dead trainer and remove its files; a one-line report."""
    t0 = time.monotonic()
    shm_dirs = list(dict.fromkeys(shm_dirs))
    shm = shm_dirs[0] if shm_dirs else None
    killed, held = kill_owned(token, shm_dir=shm)
    killed_s = time.monotonic() - t0
    removed = sweep_files(shm_dirs, token=token) if shm_dirs else []
    held = {p for p in held if RECLAIMABLE.match(os.path.basename(p)) and os.path.exists(p)}
    if shm is not None and held:
        for path in sorted(held - _held_by_anyone(held, shm)):
            with contextlib.suppress(OSError):
                os.unlink(path)
                removed.append(path)
    if not killed and not removed:
        return ""
    procs = ", ".join(f"{title} {pid}" for pid, title in killed) or "none"
    files = ", ".join(os.path.basename(p) for p in removed) or "none"
    return (
        f"langrl reaper: trainer {token.split('-')[0]} exited; killed its {len(killed)} "
        f"processes within {killed_s:.2f} s ({procs}); removed {len(removed)} "
        f"shared-memory files ({files})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Kill a dead trainer's processes.")
    parser.add_argument("pid", type=int)
    parser.add_argument("start", type=int, help="the trainer's start time (clock ticks)")
    parser.add_argument("--shm-dir", action="append", default=[])
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    wait_for_exit(args.pid, args.start)
    t_exit = time.monotonic()
    line = reap(f"{args.pid}-{args.start}", args.shm_dir)
    if line:
        print(f"{line}; done {time.monotonic() - t_exit:.2f} s after the exit", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
