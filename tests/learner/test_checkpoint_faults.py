"""Checkpoints under faults: a kill during a save, truncated and corrupt files, a full disk
(a failing write, and a real small tmpfs where mounting is allowed), ``keep_last`` pruning.

Every fault must leave ``latest_checkpoint`` naming a complete checkpoint that loads, and
every refusal must be one line naming the file (or the save) at fault."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import torch
from learner_utils import make_batch

from langrl.learner import Learner, LearnerConfig, latest_checkpoint
from langrl.learner import learner as learner_module
from langrl.learner.learner import (
    MANIFEST_FILE,
    STATE_FILE,
    CheckpointError,
    prune_checkpoints,
    verify_checkpoint,
)
from langrl.policy_model import PolicyValueModel

HERE = Path(__file__).resolve().parent
ENOSPC = "No space left on device"


@pytest.fixture()
def trained(tiny_policy) -> Learner:
    learner = Learner(tiny_policy, LearnerConfig(lr=1e-3, c_kl=0.0))
    learner.step(make_batch(3, advantages=[1.0, -1.0, 0.5]))  # non-empty optimizer state
    return learner


def _one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text and text, text
    return text


def _loads(tiny_policy, path: Path, step: int) -> None:
    """``path`` is what ``latest_checkpoint`` gives, and it loads at ``step``."""
    fresh = Learner(tiny_policy, LearnerConfig(lr=1e-3, c_kl=0.0))
    assert fresh.load_checkpoint(path)[0] == step


def _temps(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".tmp-"))


# --- the manifest --------------------------------------------------------------------------------


def test_the_manifest_lists_every_file_with_its_size(trained, tmp_path):
    path = trained.save_checkpoint(tmp_path, step=1)
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    on_disk = {
        p.relative_to(path).as_posix(): p.stat().st_size
        for p in path.rglob("*")
        if p.is_file() and p.name != MANIFEST_FILE
    }
    assert {name: r["size"] for name, r in manifest["files"].items()} == on_disk
    assert {"model.safetensors", "optimizer.pt", STATE_FILE} <= set(on_disk)
    assert "value_head/value_head.safetensors" in on_disk
    assert json.loads((path / STATE_FILE).read_text())["format_version"] == 2
    verify_checkpoint(path)


def test_files_are_hashed_in_blocks(trained, tmp_path, monkeypatch):
    # Small blocks: the model file spans several, each its own digest; a flip in any is found.
    monkeypatch.setattr(learner_module, "HASH_BLOCK_BYTES", 64 << 10)
    path = trained.save_checkpoint(tmp_path, step=1)
    record = json.loads((path / MANIFEST_FILE).read_text())["files"]["model.safetensors"]
    assert len(record["sha256"]) == -(-record["size"] // (64 << 10)) > 2
    _flip_bit(path / "model.safetensors", at=record["size"] - 10)
    with pytest.raises(CheckpointError, match="model.safetensors: corrupt"):
        verify_checkpoint(path)


# --- a kill during a save --------------------------------------------------------------------------

# For each kill point: save steps 1 and 2 under ``base/point``, then fork a process that
# saves step 3 with a hook that SIGKILLs it at that point of the save (no cleanup runs, as
# under the OOM killer). One interpreter for all points (imports cost seconds each); the
# forks are safe as this process never starts a thread (one torch thread, set first).
KILL_CHILD = textwrap.dedent(
    """
    import io, json, os, signal, sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {here!r})
    from learner_utils import make_batch
    from langrl.learner import Learner, LearnerConfig
    from langrl.learner import learner as lm
    from langrl.policy_model import PolicyValueModel

    policy, base, points = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    learner = Learner(policy, LearnerConfig(lr=1e-3, c_kl=0.0))
    learner.step(make_batch(3, advantages=[1.0, -1.0, 0.5]))

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    def install(point):
        if point == "model":  # the model files written, nothing else
            save_model = PolicyValueModel.save_pretrained
            def hook(self, *args, **kwargs):
                save_model(self, *args, **kwargs)
                die()
            PolicyValueModel.save_pretrained = hook
        elif point == "optimizer":  # half of optimizer.pt on disk
            save = torch.save
            def hook(obj, f, *args, **kwargs):
                buf = io.BytesIO()
                save(obj, buf)
                f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                f.flush()
                os.fsync(f.fileno())
                die()
            lm.torch.save = hook
        elif point == "manifest":  # half of manifest.json on disk
            write_manifest = lm._write_manifest
            def hook(path):
                write_manifest(path)
                data = (path / lm.MANIFEST_FILE).read_bytes()
                (path / lm.MANIFEST_FILE).write_bytes(data[: len(data) // 2])
                die()
            lm._write_manifest = hook
        elif point == "renamed":  # step_3 in place, latest not yet replaced
            lm._write_pointer = die
        elif point == "pointer":  # latest's temp file written, not yet renamed over latest
            replace = os.replace
            def hook(src, dst):
                if Path(dst).name == lm.LATEST_FILE:
                    die()
                replace(src, dst)
            lm.os.replace = hook
        elif point == "prune":  # step_3 saved and latest; killed while removing step_2
            rmtree = lm.shutil.rmtree
            def hook(path, *args, **kwargs):
                if "prune-" in Path(path).name:
                    die()
                rmtree(path, *args, **kwargs)
            lm.shutil.rmtree = hook

    signals = {{}}
    for point in points:
        root = base / point
        learner.save_checkpoint(root, step=1)
        learner.save_checkpoint(root, step=2)
        pid = os.fork()
        if pid == 0:
            try:
                install(point)
                learner.save_checkpoint(root, step=3, keep_last=1 if point == "prune" else None)
            finally:
                os._exit(3)  # not killed: the hook never ran
        _, status = os.waitpid(pid, 0)
        signals[point] = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    print(json.dumps(signals))
    """
).format(here=str(HERE))

#: Kill point -> the step ``latest_checkpoint`` must then name.
KILL_POINTS = {"model": 2, "optimizer": 2, "manifest": 2, "renamed": 2, "pointer": 2, "prune": 3}


@pytest.fixture(scope="module")
def killed_saves(tiny_policy, tmp_path_factory) -> tuple[Path, dict[str, int | None]]:
    """Runs KILL_CHILD once: the base directory and each kill point's terminating signal."""
    base = tmp_path_factory.mktemp("killed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    child = subprocess.run(
        [sys.executable, "-c", KILL_CHILD, str(tiny_policy), str(base), *KILL_POINTS],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    return base, json.loads(child.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("point", "expected"), KILL_POINTS.items())
def test_a_kill_during_a_save_leaves_latest_on_a_complete_checkpoint(
    tiny_policy, killed_saves, point, expected
):
    base, signals = killed_saves
    root = base / point
    assert signals[point] == signal.SIGKILL
    if point in ("model", "optimizer", "manifest"):
        assert len(_temps(root)) == 1  # the half-written step_3, never renamed into place
    if point == "renamed":
        assert (root / "step_00000003").is_dir()  # complete, but latest still names step_2
    latest = latest_checkpoint(root)
    assert latest == root / f"step_{expected:08d}"
    verify_checkpoint(latest)
    _loads(tiny_policy, root, expected)

    # The next save removes what the killed one left behind.
    Learner(tiny_policy, LearnerConfig(c_kl=0.0)).save_checkpoint(root, step=4)
    assert _temps(root) == []
    assert latest_checkpoint(root) == root / "step_00000004"


# --- truncated and corrupt files ---------------------------------------------------------------------


def _flip_bit(file: Path, at: int | None = None) -> None:
    size = file.stat().st_size
    at = size // 2 if at is None else at
    with open(file, "r+b") as f:
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte ^ 0x10]))


def _truncate(file: Path) -> tuple[int, int]:
    size = file.stat().st_size
    with open(file, "r+b") as f:
        f.truncate(size // 3)
    return size // 3, size


@pytest.mark.parametrize(
    "name", ["model.safetensors", "optimizer.pt", "value_head/value_head.safetensors"]
)
def test_a_truncated_file_is_refused_in_one_line_and_latest_falls_back(
    trained, tiny_policy, tmp_path, caplog, name
):
    first = trained.save_checkpoint(tmp_path, step=1)
    second = trained.save_checkpoint(tmp_path, step=2)
    kept, size = _truncate(second / name)
    message = f"{second / name}: truncated ({kept} of {size} bytes)"

    with pytest.raises(CheckpointError) as err:
        verify_checkpoint(second)
    assert _one_line(err.value) == message
    with pytest.raises(CheckpointError) as err:  # an explicit directory: refused, no fallback
        Learner(tiny_policy, LearnerConfig(c_kl=0.0)).load_checkpoint(second)
    assert str(err.value) == message

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="langrl.learner.learner"):
        assert latest_checkpoint(tmp_path) == first
    [record] = caplog.records  # one warning line, naming what was skipped and why
    assert message in record.getMessage() and str(first) in record.getMessage()
    assert "\n" not in record.getMessage()
    _loads(tiny_policy, tmp_path, 1)  # a root: the newest intact checkpoint


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt", STATE_FILE])
def test_a_corrupt_file_is_refused_in_one_line_and_latest_falls_back(
    trained, tiny_policy, tmp_path, caplog, name
):
    first = trained.save_checkpoint(tmp_path, step=1)
    second = trained.save_checkpoint(tmp_path, step=2)
    _flip_bit(second / name)  # same size: only the digest can tell
    message = f"{second / name}: corrupt (sha256 differs from {MANIFEST_FILE})"

    with pytest.raises(CheckpointError) as err:
        Learner(tiny_policy, LearnerConfig(c_kl=0.0)).load_checkpoint(second)
    assert _one_line(err.value) == message
    with caplog.at_level(logging.WARNING, logger="langrl.learner.learner"):
        assert latest_checkpoint(tmp_path) == first
    assert message in caplog.text
    _loads(tiny_policy, tmp_path, 1)


def test_a_missing_or_unreadable_manifest_or_file_is_refused(trained, tmp_path):
    path = trained.save_checkpoint(tmp_path, step=1)
    (path / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"/config\.json: missing$"):
        verify_checkpoint(path)

    path = trained.save_checkpoint(tmp_path, step=2)
    (path / MANIFEST_FILE).write_text('{"files": ')  # a manifest cut short
    with pytest.raises(CheckpointError, match=r"/manifest\.json: unreadable \(JSONDecodeError\)$"):
        verify_checkpoint(path)

    (path / MANIFEST_FILE).unlink()  # written by this version, so it must have one
    with pytest.raises(CheckpointError, match=r"/manifest\.json: missing$"):
        verify_checkpoint(path)
    assert latest_checkpoint(tmp_path) is None


def test_when_every_checkpoint_is_bad_none_is_found_and_loading_says_so(
    trained, tiny_policy, tmp_path, caplog
):
    path = trained.save_checkpoint(tmp_path, step=1)
    _truncate(path / "model.safetensors")
    with caplog.at_level(logging.WARNING, logger="langrl.learner.learner"):
        assert latest_checkpoint(tmp_path) is None
    assert f"no intact checkpoint under {tmp_path}" in caplog.text
    assert latest_checkpoint(tmp_path, verify=False) == path  # complete, not checked
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        Learner(tiny_policy, LearnerConfig(c_kl=0.0)).load_checkpoint(tmp_path)


def _make_legacy(path: Path) -> None:
    """A checkpoint as written before manifests (format_version 1, no manifest.json)."""
    (path / MANIFEST_FILE).unlink()
    state = json.loads((path / STATE_FILE).read_text())
    (path / STATE_FILE).write_text(json.dumps({**state, "format_version": 1}))


def test_checkpoints_from_before_manifests_still_load(trained, tiny_policy, tmp_path):
    path = trained.save_checkpoint(tmp_path, step=3, extra={"data_position": 7})
    _make_legacy(path)
    verify_checkpoint(path)
    assert latest_checkpoint(tmp_path) == path
    resumed = Learner(tiny_policy, LearnerConfig(lr=1e-3, c_kl=0.0))
    assert resumed.load_checkpoint(tmp_path) == (3, {"data_position": 7})
    for name, tensor in trained.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], tensor), name


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt"])
def test_a_truncated_checkpoint_from_before_manifests_is_refused(
    trained, tiny_policy, tmp_path, name
):
    first = trained.save_checkpoint(tmp_path, step=1)
    _make_legacy(first)
    second = trained.save_checkpoint(tmp_path, step=2)
    _make_legacy(second)
    _truncate(second / name)
    with pytest.raises(CheckpointError) as err:
        verify_checkpoint(second)
    assert _one_line(err.value).startswith(f"{second / name}: truncated")
    assert latest_checkpoint(tmp_path) == first
    _loads(tiny_policy, tmp_path, 1)


# --- a full disk -----------------------------------------------------------------------------------


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _fail_model_write(monkeypatch):
    save_model = PolicyValueModel.save_pretrained

    def partial(self, path, *args, **kwargs):  # the model written, then the disk is full
        save_model(self, path, *args, **kwargs)
        _enospc()

    monkeypatch.setattr(PolicyValueModel, "save_pretrained", partial)


def _fail_optimizer_write(monkeypatch):
    def partial(obj, f, *args, **kwargs):  # some bytes written, then the disk is full
        f.write(b"PK\x03\x04" + bytes(1000))
        _enospc()

    monkeypatch.setattr(learner_module.torch, "save", partial)


def _fail_manifest_write(monkeypatch):
    monkeypatch.setattr(learner_module, "_write_manifest", _enospc)


def _fail_fsync(monkeypatch):
    monkeypatch.setattr(learner_module, "_fsync_tree", _enospc)


def _fail_pointer_write(monkeypatch):  # step_2 already renamed into place
    monkeypatch.setattr(learner_module, "_write_pointer", _enospc)


@pytest.mark.parametrize(
    "fail",
    [
        _fail_model_write,
        _fail_optimizer_write,
        _fail_manifest_write,
        _fail_fsync,
        _fail_pointer_write,
    ],
)
def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_previous_checkpoint(
    trained, tiny_policy, tmp_path, monkeypatch, fail
):
    root = tmp_path / "run" / "checkpoints"
    first = trained.save_checkpoint(root, step=1)
    before = sorted(os.listdir(root))
    fail(monkeypatch)
    with pytest.raises(CheckpointError) as err:
        trained.save_checkpoint(root, step=2, keep_last=1)
    assert _one_line(err.value) == f"saving step 2 to {root} failed: {ENOSPC}"
    assert isinstance(err.value.__cause__, OSError)
    assert sorted(os.listdir(root)) == before  # no step_00000002, no temp dir
    assert (root / "latest").read_text() == "step_00000001"
    monkeypatch.undo()
    assert latest_checkpoint(root) == first
    verify_checkpoint(first)
    _loads(tiny_policy, root, 1)


def test_torch_and_safetensors_write_errors_read_as_their_os_error():
    # What a real full disk raises (seen on a 1 MB tmpfs): torch's writer a RuntimeError
    # with the OSError as context, safetensors the errno in its text.
    try:
        try:
            raise OSError(errno.ENOSPC, ENOSPC)
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")  # noqa: B904
    except RuntimeError as err:
        assert learner_module._write_failure(err) == ENOSPC
    rust = learner_module.SafetensorError(
        "Error while serializing: I/O error: No space left on device (os error 28)"
    )
    assert learner_module._write_failure(rust) == ENOSPC
    assert learner_module._write_failure(OSError("disk gone")) == "disk gone"


@pytest.fixture()
def small_tmpfs(tmp_path):
    """``mount(size)``: a fresh tmpfs of ``size`` bytes; skips where mounting is not allowed
    (not root, no CAP_SYS_ADMIN); unmounted at teardown."""
    mounted: list[Path] = []

    def mount(size: int) -> Path:
        where = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
        where.mkdir()
        kib = -(-size // 4096) * 4
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(where)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", str(where)], check=False)


def _pages(*files: Path) -> int:
    """Bytes a tmpfs charges for ``files`` (whole 4 KiB pages)."""
    return sum(-(-f.stat().st_size // 4096) * 4096 for f in files)


@pytest.mark.parametrize("failing", ["model.safetensors", "optimizer.pt"])
def test_a_real_full_disk_on_a_small_tmpfs(trained, tiny_policy, tmp_path, small_tmpfs, failing):
    # A checkpoint on ordinary disk tells the sizes; the tmpfs then holds one checkpoint
    # (and ``latest``), what a save writes before ``failing``, and half of ``failing``: the
    # write fails in safetensors' Rust writer (model) or torch's C++ one (optimizer).
    probe = trained.save_checkpoint(tmp_path / "probe", step=1)
    files = [f for f in probe.rglob("*") if f.is_file()]
    written_after = {"optimizer.pt", STATE_FILE, MANIFEST_FILE}
    if failing == "model.safetensors":
        before = []
    else:
        before = [f for f in files if f.relative_to(probe).as_posix() not in written_after]
    size = _pages(*files) + 2 * 4096 + _pages(*before) + (probe / failing).stat().st_size // 2
    root = small_tmpfs(size) / "checkpoints"
    first = trained.save_checkpoint(root, step=1)
    used = shutil.disk_usage(root).used
    with pytest.raises(CheckpointError) as err:
        trained.save_checkpoint(root, step=2)
    assert _one_line(err.value) == f"saving step 2 to {root} failed: {ENOSPC}"
    assert shutil.disk_usage(root).used == used  # the partial step_2 is gone
    assert sorted(os.listdir(root)) == ["latest", "step_00000001"]
    assert latest_checkpoint(root) == first
    _loads(tiny_policy, root, 1)


# --- keep_last ---------------------------------------------------------------------------------------


def test_keep_last_prunes_older_checkpoints_after_each_save(trained, tmp_path):
    for step in range(1, 6):
        trained.save_checkpoint(tmp_path, step=step, keep_last=2)
    assert sorted(os.listdir(tmp_path)) == ["latest", "step_00000004", "step_00000005"]
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000005"
    trained.save_checkpoint(tmp_path, step=6)  # None keeps all
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("step_")]) == 3
    with pytest.raises(ValueError, match="keep_last must be None or an int >= 1, got 0"):
        trained.save_checkpoint(tmp_path, step=7, keep_last=0)


def test_pruning_never_removes_what_latest_names_or_what_is_kept(trained, tmp_path):
    for step in range(1, 5):
        trained.save_checkpoint(tmp_path, step=step)
    (tmp_path / "latest").write_text("step_00000001")
    (tmp_path / "step_00000009").mkdir()  # incomplete: not a checkpoint, left alone
    removed = prune_checkpoints(tmp_path, 1, keep=[tmp_path / "step_00000002"])
    assert [p.name for p in removed] == ["step_00000003"]
    assert sorted(os.listdir(tmp_path)) == [
        "latest",
        "step_00000001",
        "step_00000002",
        "step_00000004",
        "step_00000009",
    ]


def test_a_failed_save_prunes_nothing(trained, tmp_path, monkeypatch):
    trained.save_checkpoint(tmp_path, step=1)
    trained.save_checkpoint(tmp_path, step=2)
    _fail_optimizer_write(monkeypatch)
    with pytest.raises(CheckpointError):
        trained.save_checkpoint(tmp_path, step=3, keep_last=1)
    assert sorted(os.listdir(tmp_path)) == ["latest", "step_00000001", "step_00000002"]
