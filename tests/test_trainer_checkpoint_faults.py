"""Checkpoint faults in the training loop (fake engine, real learner): a periodic save on a
full disk warns and training goes on, a failing final save raises, ``resume`` falls back
past a corrupt checkpoint, and ``keep_last`` prunes."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest
from trainer_fakes import FakeSyncEngine

from langrl.learner import latest_checkpoint
from langrl.learner import learner as learner_module
from langrl.learner.learner import CheckpointError, verify_checkpoint
from langrl.tiny.model import build_random_policy
from langrl.training import train
from langrl.training.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent
ENOSPC = "No space left on device"


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> Path:
    return build_random_policy(tmp_path_factory.mktemp("policy"), "test")


@pytest.fixture()
def engine(policy):
    engine = FakeSyncEngine(policy)
    yield engine
    engine.shutdown()


def _config(policy, run_dir, *overrides, **fields):
    args = ["--total_steps", "3", "--batch_size", "4", "--eval.k", "1",
            "--eval.num_problems", "2", "--eval_every", "0", "--eval_at_start", "false",
            "--checkpoint_every", "1", "--text_every", "0", "--progress", "false",
            "--run_dir", str(run_dir), "--cispo.num_prompts", "2", "--cispo.group_size", "4",
            *overrides]  # fmt: skip
    return load_config(
        ROOT / "configs" / "tiny_cpu.yaml", args, agent="cispo", model=str(policy), **fields
    )


def _disk_full_at(monkeypatch, step: int) -> None:
    """The save of ``step`` fails with ENOSPC (after the model and optimizer are written)."""
    write_manifest = learner_module._write_manifest

    def failing(path: Path) -> None:
        if f"step_{step:08d}" in path.name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write_manifest(path)

    monkeypatch.setattr(learner_module, "_write_manifest", failing)


def _steps(ckpt: Path) -> list[str]:
    return sorted(p.name for p in ckpt.iterdir() if not p.name.startswith("latest"))


def test_a_periodic_save_on_a_full_disk_warns_and_training_goes_on(
    policy, engine, tmp_path, monkeypatch, caplog
):
    _disk_full_at(monkeypatch, 2)
    with caplog.at_level(logging.WARNING, logger="langrl.training.run"):
        result = train(_config(policy, tmp_path), engine)
    assert result["step"] == 3
    ckpt = tmp_path / "checkpoints"
    [warning] = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert warning == (
        f"saving step 2 to {ckpt} failed: {ENOSPC}; training goes on "
        "(resume would use the previous one)"
    )
    assert _steps(ckpt) == ["step_00000001", "step_00000003"]  # no trace of step 2
    assert latest_checkpoint(ckpt) == ckpt / "step_00000003"


def test_a_failing_final_save_raises_and_resume_starts_from_the_previous(
    policy, engine, tmp_path, monkeypatch
):
    _disk_full_at(monkeypatch, 3)
    with pytest.raises(CheckpointError) as err:
        train(_config(policy, tmp_path, "--checkpoint_every", "2"), engine)
    ckpt = tmp_path / "checkpoints"
    assert str(err.value) == f"saving step 3 to {ckpt} failed: {ENOSPC}"
    assert latest_checkpoint(ckpt) == ckpt / "step_00000002"
    monkeypatch.undo()
    result = train(_config(policy, tmp_path, "--checkpoint_every", "2", resume=True), engine)
    assert result["step"] == 3
    assert latest_checkpoint(ckpt) == ckpt / "step_00000003"


def test_resume_falls_back_past_a_corrupt_checkpoint(policy, engine, tmp_path, caplog):
    train(_config(policy, tmp_path), engine)
    ckpt = tmp_path / "checkpoints"
    model = ckpt / "step_00000003" / "model.safetensors"
    with open(model, "r+b") as f:  # one flipped bit in the newest checkpoint
        f.seek(model.stat().st_size // 2)
        byte = f.read(1)[0]
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte ^ 1]))
    with caplog.at_level(logging.INFO, logger="langrl"):
        result = train(_config(policy, tmp_path, "--total_steps", "4", resume=True), engine)
    assert f"{model}: corrupt (sha256 differs from manifest.json)" in caplog.text
    assert f"resumed from {ckpt / 'step_00000002'} at step 2" in caplog.text
    assert result["step"] == 4
    verify_checkpoint(ckpt / "step_00000003")  # saved again, intact
    assert latest_checkpoint(ckpt) == ckpt / "step_00000004"


def test_keep_last_prunes_the_run_s_checkpoints(policy, engine, tmp_path):
    train(_config(policy, tmp_path, "--keep_last", "2"), engine)
    ckpt = tmp_path / "checkpoints"
    assert _steps(ckpt) == ["step_00000002", "step_00000003"]


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_keep_last_is_validated(policy, tmp_path, value):
    with pytest.raises(ConfigError, match="keep_last"):
        _config(policy, tmp_path, "--keep_last", value)
    assert _config(policy, tmp_path, "--keep_last", "1").keep_last == 1
    assert _config(policy, tmp_path).keep_last is None
