"""Reproducible runs and exact resume with the real vLLM engine (slow; runs in CI).

- Two seeded sync runs are the same run: the session engine serves both (its initial
  weights pushed back before each, which also empties its prefix cache), and every
  request carries a seed from the run seed and its task's place in the data order. Same
  per-step rewards, sampled ids and weights (to 1e-6; they come out bit-identical here).
  MCTS runs with one worker per tree: with more, the tree depends on which worker's engine
  call returns first (see docs/design.md, "Reproducibility").
- A sync run killed with SIGKILL right after its step-2 checkpoint and resumed ends as the
  uninterrupted run: weights (to 1e-6), step counter, data order and TensorBoard series.
  Real ``scripts/train_agent.py`` processes, each with its own engine (three vLLM starts),
  so the comparison also spans processes, as a user's reruns do. The kill goes to the
  trainer's whole process group (its engine processes too), so that this test leaves
  nothing behind whatever the trainer's own cleanup does. The trainer sends it to itself,
  as step 3's update begins: a test that polled for the checkpoint and killed from outside
  missed it in CI (the engine's busy-wait starved the poller for the whole of steps 3-4).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_train import _config

from langrl.learner import Learner, latest_checkpoint
from langrl.training import train

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-6


def _initial_weights(engine):
    model = engine.engine.model  # the engine's copy of what it serves (as preserve_weights)
    lm = {k: v.detach().clone() for k, v in model.lm.state_dict().items()}
    head = {k: v.detach().clone() for k, v in model.value_head.state_dict().items()}
    return lm, head


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


# CISPO trains its value head here (c_value 1): the test policy's samples all score -1, so
# its group advantages are 0, and the value loss is what makes the weights depend on the
# sampled ids. One MCTS worker per tree (see the module docstring).
AGENT_FLAGS = {
    "cispo": ["--learner.c_value", "1.0", "--cispo.num_prompts", "4"],
    "mcts": ["--mcts.num_workers", "1", "--mcts.iterations_per_worker", "6"],
}


@pytest.mark.parametrize("agent", ["cispo", "mcts"])
def test_two_seeded_sync_runs_are_the_same_run(
    agent, engine, tiny_policy_path, tmp_path, monkeypatch
):
    initial = _initial_weights(engine)
    runs: list[list[dict]] = []
    original = Learner.step

    def recording_step(self, batch, current_version=None):
        metrics = original(self, batch, current_version=current_version)
        runs[-1].append({
            "rewards": [t.reward for t in batch],
            "ids": [t.completion_ids for t in batch],
            "logprobs": [t.behaviour_logprobs for t in batch],
            "weights": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
        })  # fmt: skip
        return metrics

    monkeypatch.setattr(Learner, "step", recording_step)
    for name in ("a", "b"):
        engine.load_weights(*initial)  # the initial policy again; the prefix cache emptied
        runs.append([])
        config = _config(
            tiny_policy_path, tmp_path / name, agent, "--mode", "sync", "--total_steps", "4",
            *AGENT_FLAGS[agent],
        )  # fmt: skip
        assert train(config, engine)["step"] == 4
    a, b = runs
    assert len(a) == len(b) == 4
    moved = _max_diff(a[-1]["weights"], a[0]["weights"])
    assert moved > 1e-4, "the weights did not move: the comparison would prove nothing"
    for step, (x, y) in enumerate(zip(a, b, strict=True), start=1):
        assert x["rewards"] == y["rewards"], step
        assert x["ids"] == y["ids"], step
        for lx, ly in zip(x["logprobs"], y["logprobs"], strict=True):
            assert lx == pytest.approx(ly, abs=TOLERANCE), step
        assert _max_diff(x["weights"], y["weights"]) <= TOLERANCE, step


# --- SIGKILL and resume, with real trainer processes ---

CLI_FLAGS = [
    "--agent", "cispo", "--mode", "sync", "--total_steps", "4", "--checkpoint_every", "2",
    "--batch_size", "4", "--sync_every", "1", "--max_staleness", "1",
    "--eval.k", "2", "--eval.num_problems", "4", "--eval.max_tokens", "64", "--eval_every", "0",
    "--text_every", "1", "--progress", "false",
    # 3 prompts x 4 samples: a rollout feeds steps 1-3, so the step-2 checkpoint holds the
    # 4 trajectories step 3 trains (the killed trainer dies as that update begins).
    "--cispo.num_prompts", "3", "--cispo.group_size", "4", "--cispo.max_tokens", "64",
    "--cispo.filter_zero_variance", "false", "--learner.c_value", "1.0",
    "--learner.lr", "1e-3", "--learner.micro_batch_size", "8",
    "--learner.value_warmup_steps", "0", "--learner.warmup_steps", "0",
    "--engine.kv_cache_gib", "0.5",
]  # fmt: skip


# ``python -c`` this, then the script and its flags: train_agent.py, whose learner SIGKILLs
# the trainer's whole process group (engine included) as the update after the checkpoint of
# step LANGRL_TEST_KILL_AFTER begins. Test code only: langrl has no such switch.
_KILLED_AFTER_CHECKPOINT = """
import os, runpy, signal, sys
from langrl.learner import Learner
after = int(os.environ["LANGRL_TEST_KILL_AFTER"])
update = Learner.step
def update_or_die(self, *args, **kwargs):
    if self.global_step == after:
        os.killpg(0, signal.SIGKILL)
    return update(self, *args, **kwargs)
Learner.step = update_or_die
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _trainer(
    run_dir: Path, policy: Path, *extra: str, kill_after: int | None = None
) -> subprocess.Popen:
    log = open(run_dir.parent / f"{run_dir.name}.log", "ab")  # noqa: SIM115  (the child's)
    python, env = [sys.executable], dict(os.environ)
    if kill_after is not None:
        python += ["-c", _KILLED_AFTER_CHECKPOINT]
        env["LANGRL_TEST_KILL_AFTER"] = str(kill_after)
    return subprocess.Popen(
        [*python, str(ROOT / "scripts" / "train_agent.py"), *CLI_FLAGS,
         "--model", str(policy), "--run_dir", str(run_dir), *extra],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def _finish(proc: subprocess.Popen, run_dir: Path, timeout: float = 400) -> None:
    try:
        rc = proc.wait(timeout=timeout)
    finally:
        _kill_group(proc)
    log = (run_dir.parent / f"{run_dir.name}.log").read_text(errors="replace")
    assert rc == 0, f"trainer exited {rc}:\n{log[-3000:]}"


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the trainer's process group and wait until none of it is left."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


def _unheld_psm() -> set[Path]:
    """vLLM's shared-memory queues (``/dev/shm/psm_*``) that no live process maps or holds
    open: what a SIGKILLed engine leaves behind (vLLM's files, not langrl's)."""
    files = set(Path("/dev/shm").glob("psm_*"))
    for proc_dir in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            maps = (proc_dir / "maps").read_text()
            files = {f for f in files if f.name not in maps}
        with contextlib.suppress(OSError):
            held = {os.readlink(fd) for fd in (proc_dir / "fd").iterdir()}
            files = {f for f in files if str(f) not in held}
    return files


def _killed_after_checkpoint(run_dir: Path, policy: Path, step: int) -> None:
    """Run a trainer that SIGKILLs itself (and its engine) as the update after its ``step``
    checkpoint begins; check that it died so, with that checkpoint its newest."""
    left_before = _unheld_psm()
    proc = _trainer(run_dir, policy, kill_after=step)
    try:
        rc = proc.wait(timeout=400)
    finally:
        _kill_group(proc)  # whatever of its group is left
    for leftover in _unheld_psm() - left_before:  # this kill's, so as to leave nothing
        leftover.unlink(missing_ok=True)
    log = (run_dir.parent / f"{run_dir.name}.log").read_text(errors="replace")
    assert rc == -signal.SIGKILL, f"the trainer was not killed (exit {rc}):\n{log[-3000:]}"
    assert latest_checkpoint(run_dir / "checkpoints").name == f"step_{step:08d}"


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    weights = load_file(ckpt / "model.safetensors")
    head = load_file(ckpt / "value_head" / "value_head.safetensors")
    return weights | {f"value_head.{k}": v for k, v in head.items()}


def _checkpoint(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict]:
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    return _weights(ckpt), json.loads((ckpt / "learner_state.json").read_text())


def _series(run_dir: Path) -> tuple[dict[str, dict[int, float]], dict[str, dict[int, str]]]:
    """TensorBoard's scalar and text series of a run, as TensorBoard shows them (a resumed
    session's purge hides what the killed one wrote after its checkpoint). Wall-clock
    scalars (``*_s``: seconds, rates) are left out: they measure the machine, not the run;
    so is each transcript's engine version (``, v3``): the serving engine's own counter,
    which a resumed run's fresh engine starts anew (``perf/policy_version`` is the run's)."""
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    scalars = {
        tag: {e.step: e.value for e in acc.Scalars(tag)}
        for tag in acc.Tags()["scalars"]
        if not tag.endswith("_s")
    }
    texts = {
        tag: {
            e.step: re.sub(r", v\d+\n", ", v?\n", e.tensor_proto.string_val[0].decode() + "\n")
            for e in acc.Tensors(tag)
        }
        for tag in acc.Tags()["tensors"]
        if not tag.startswith("hyperparameters")  # the config: --resume differs
    }
    return scalars, texts


def test_sigkill_after_a_checkpoint_then_resume_ends_as_the_uninterrupted_run(
    tiny_policy_path, tmp_path
):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    _finish(_trainer(whole, tiny_policy_path), whole)
    _killed_after_checkpoint(parts, tiny_policy_path, step=2)
    _, saved = _checkpoint(parts)
    assert len(saved["extra"]["buffer"]["trajectories"]) == 4  # what step 3 will train
    _finish(_trainer(parts, tiny_policy_path, "--resume"), parts)

    weights_a, state_a = _checkpoint(whole)
    weights_b, state_b = _checkpoint(parts)
    moved = _max_diff(weights_a, _weights(whole / "checkpoints" / "step_00000002"))
    assert moved > 1e-4, "steps 3-4 did not move the weights: the comparison would prove nothing"
    assert _max_diff(weights_a, weights_b) <= TOLERANCE
    assert state_a["global_step"] == state_b["global_step"] == 4
    extra_a, extra_b = state_a["extra"], state_b["extra"]
    assert extra_a["global_step"] == extra_b["global_step"] == 4
    assert extra_a["sampler"] == extra_b["sampler"]  # the same data order, to the task
    assert extra_a["run_version"] == extra_b["run_version"]
    counts = ("gen_tokens_total", "gen_samples_total", "generated_trajectories_total",
              "trained_trajectories_total")  # fmt: skip
    assert {k: extra_a["totals"][k] for k in counts} == {k: extra_b["totals"][k] for k in counts}

    scalars_a, texts_a = _series(whole)
    scalars_b, texts_b = _series(parts)
    assert scalars_a.keys() == scalars_b.keys()
    for tag, series in scalars_a.items():
        assert series.keys() == scalars_b[tag].keys(), tag
        for step, value in series.items():
            assert scalars_b[tag][step] == pytest.approx(value, rel=TOLERANCE, abs=TOLERANCE), (
                tag,
                step,
            )
    assert list(scalars_a["loss/total"]) == [1, 2, 3, 4]
    assert texts_a == texts_b
