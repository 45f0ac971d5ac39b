"""The default policy shipped with the package: what the current code builds, and used.

``scripts/build_tiny_policy.py --ship`` writes ``langrl/tiny/shipped-policies/tiny-default``
(a 10-20 minute build on 2 cores); ``--check`` rebuilds it in full and compares the weights. These
tests are the cheap part of that agreement, for every run of the suite: the record belongs
to the current config and format, the files are the ones it records, a replay of the first
steps of the build gives the recorded loss curve, and the shipped weights fit the end of
that curve. If one fails after a change to the config, ``FORMAT_VERSION`` or the training
code, rebuild with ``--ship``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from langrl.policy_model import PolicyValueModel
from langrl.tiny import warmstart
from langrl.tiny.model import build_random_policy
from langrl.tiny.tokenizer import build_tokenizer
from langrl.tiny.warmstart import (
    FORMAT_VERSION,
    POLICY_CONFIGS,
    RECORD_FILE,
    SHIPPED_POLICIES,
    config_hash,
    default_policy_path,
    ensure_policy,
    file_hashes,
    shipped_policy,
    trace_batches,
    warm_start,
)

SHIPPED = SHIPPED_POLICIES["default"]
CONFIG = POLICY_CONFIGS["default"]
REBUILD = "python scripts/build_tiny_policy.py --ship"
#: Steps of the build replayed from the random initialisation (1-2 s each on one thread).
REPLAY_STEPS = 12
#: One thread, like the test policy: tests share the cores, where 2 threads thrash. The
#: shipped build ran on 2; on the machine that built it, 12 replayed steps on one thread gave
#: the recorded losses to the last bit (weights 5e-7 apart).
REPLAY_THREADS = 1
#: Replayed losses may differ from the recorded ones by this much: other CPUs and torch
#: builds change the last bits of each step; a gap above this is a different build.
REPLAY_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def record() -> dict:
    return json.loads((SHIPPED / RECORD_FILE).read_text())


def test_shipped_policy_is_the_current_default_config(record):
    assert record["format_version"] == FORMAT_VERSION, f"stale shipped policy: {REBUILD}"
    assert record["config_hash"] == config_hash(CONFIG), f"stale shipped policy: {REBUILD}"
    assert record["config"] == dataclasses.asdict(CONFIG)
    assert len(record["losses"]) == CONFIG.steps


def test_shipped_files_have_their_recorded_sha256(record):
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(record["sha256"])
    assert file_hashes(SHIPPED) == record["sha256"]
    assert shipped_policy(CONFIG) == SHIPPED


def test_replaying_the_first_steps_gives_the_recorded_losses(record, tmp_path):
    """The random init and the first batches, optimiser steps and learning rates of the
    build are those of the recorded one (its loss at step 0 pins the init, the later ones
    the updates)."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(REPLAY_THREADS)
    try:
        path = build_random_policy(tmp_path, CONFIG.preset, seed=CONFIG.seed)
        model = PolicyValueModel.from_pretrained(path)
        stats = warm_start(
            model, build_tokenizer(), CONFIG, progress=False, stop_after=REPLAY_STEPS
        )
    finally:
        torch.set_num_threads(previous_threads)
    replayed, recorded = stats["losses"], record["losses"][:REPLAY_STEPS]
    gap = max(abs(a - b) for a, b in zip(replayed, recorded, strict=True))
    print(f"replayed {REPLAY_STEPS} steps: max |loss - recorded| = {gap:.3g}")
    assert gap <= REPLAY_TOLERANCE, (replayed, recorded)


def test_shipped_weights_fit_the_end_of_the_recorded_curve(record):
    """The shipped model's loss on the batches of the last steps is a little below the
    training loss recorded there (recorded before each step's update: 0.206 against 0.223
    for the shipped build): the weights are the trained end of this curve, not a random,
    a test or a half-trained policy."""
    last = 8
    model = PolicyValueModel.from_pretrained(SHIPPED)
    batches = trace_batches(CONFIG, build_tokenizer())
    losses = []
    with torch.no_grad():
        for ids, mask, labels, _ in itertools.islice(batches, CONFIG.steps - last, None):
            logits = model.lm(input_ids=ids, attention_mask=mask, use_cache=False).logits
            losses.append(
                torch.nn.functional.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1)
                ).item()
            )
            if len(losses) == last:
                break
    mean, recorded = sum(losses) / last, sum(record["losses"][-last:]) / last
    print(f"last {last} batches: shipped model {mean:.4f}, recorded {recorded:.4f}")
    assert 0.85 * recorded < mean < recorded


def _no_build(*args, **kwargs):
    raise AssertionError("ensure_policy built a policy that ships with the package")


def test_ensure_policy_copies_the_shipped_policy_into_a_fresh_cache(tmp_path, monkeypatch, record):
    monkeypatch.setenv("LANGRL_HOME", str(tmp_path))
    monkeypatch.setattr(warmstart, "build_policy", _no_build)
    path = ensure_policy("default", progress=False)
    assert path == default_policy_path("default") and path.parent.parent == tmp_path
    assert file_hashes(path) == record["sha256"]
    assert json.loads((path / RECORD_FILE).read_text()) == record
    assert path.stat().st_mode & 0o777 == 0o755
    assert ensure_policy("default", progress=False) == path  # cached from now on
    model = PolicyValueModel.from_pretrained(path)
    assert sum(p.numel() for p in model.lm.parameters()) > 3_000_000
    tok = AutoTokenizer.from_pretrained(str(path))
    assert tok("7 * 4 = 28")["input_ids"] == build_tokenizer()("7 * 4 = 28")["input_ids"]


def _fake_build(calls: list[Path]):
    def build(path, config=None, *, progress=True):
        calls.append(Path(path))
        (Path(path) / RECORD_FILE).write_text("{}")
        return Path(path)

    return build


def test_a_changed_config_or_format_version_builds(tmp_path, monkeypatch):
    monkeypatch.setenv("LANGRL_HOME", str(tmp_path))
    calls: list[Path] = []
    monkeypatch.setattr(warmstart, "build_policy", _fake_build(calls))
    ensure_policy(config=dataclasses.replace(CONFIG, steps=CONFIG.steps - 1), progress=False)
    assert len(calls) == 1
    monkeypatch.setattr(warmstart, "FORMAT_VERSION", FORMAT_VERSION + 1)
    assert shipped_policy(CONFIG) is None
    ensure_policy("default", progress=False)
    assert len(calls) == 2


def test_a_damaged_shipped_copy_warns_and_builds(tmp_path, monkeypatch):
    damaged = tmp_path / "shipped"
    shutil.copytree(SHIPPED, damaged)
    (damaged / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\n")
    monkeypatch.setitem(warmstart.SHIPPED_POLICIES, "default", damaged)
    monkeypatch.setenv("LANGRL_HOME", str(tmp_path / "home"))
    calls: list[Path] = []
    monkeypatch.setattr(warmstart, "build_policy", _fake_build(calls))
    with pytest.warns(UserWarning, match="model.safetensors"):
        ensure_policy("default", progress=False)
    assert len(calls) == 1
