"""Warm start of the tiny policy: traces, config checks, the cached test policy."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from langrl.envs.countdown import CountdownTask, check_step, grade_answer, load_countdown
from langrl.envs.countdown import format_prompt as countdown_prompt
from langrl.policy_model import PolicyValueModel
from langrl.tiny import warmstart
from langrl.tiny.tokenizer import build_tokenizer
from langrl.tiny.warmstart import (
    POLICY_CONFIGS,
    RECORD_FILE,
    WarmStartConfig,
    build_policy,
    default_policy_path,
    ensure_policy,
    iter_traces,
    make_trace,
)


@pytest.fixture(scope="module")
def langrl_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private cache, so these tests build (and time) the test policy themselves."""
    return tmp_path_factory.mktemp("langrl_home")


@pytest.fixture(scope="module")
def built_policy(langrl_home: Path) -> tuple[Path, float]:
    """The ``"test"`` policy built in ``langrl_home``, and its build time in seconds."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LANGRL_HOME", str(langrl_home))
        started = time.perf_counter()
        path = ensure_policy("test", progress=False)
        return path, time.perf_counter() - started


# --- config and traces ---


@pytest.mark.parametrize(
    "bad",
    [
        {"preset": "huge"},
        {"steps": 0},
        {"batch_size": 0},
        {"lr": 0.0},
        {"lr": float("nan")},
        {"imperfect_fraction": 1.5},
        {"wrong_operation_share": -0.1},
        {"warmup_steps": 10_000},
        {"grad_clip": 0.0},
        {"steps": 2.5},
        {"num_threads": 0},
    ],
)
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        WarmStartConfig(**bad)


def _grade_trace(task: CountdownTask, completion: str) -> tuple[list[str], str]:
    """Step verdicts and the answer's grade reason of a completion, via the env's checkers."""
    *steps, answer = completion.replace("</step>", "</step>\n").split("\n")
    pool, verdicts = task.numbers, []
    for step in steps:
        verdict, _, pool = check_step(step[len("<step>") : -len("</step>")], pool)
        verdicts.append(verdict)
    return verdicts, grade_answer(answer[len("<answer>") : -len("</answer>")], task).reason


def test_traces_are_deterministic_and_kinds_are_what_they_claim():
    config = WarmStartConfig(imperfect_fraction=0.5)
    stream_a, stream_b = iter_traces(config), iter_traces(config)
    traces = [next(stream_a) for _ in range(300)]
    assert traces == [next(stream_b) for _ in range(300)]
    tasks = {countdown_prompt(t): t for t in load_countdown("train")}
    kinds = {kind for _, _, kind in traces}
    assert kinds == {"solver", "arith_slip", "wrong_operation"}
    for prompt, completion, kind in traces:
        verdicts, answer = _grade_trace(tasks[prompt], completion)
        if kind == "solver":
            assert set(verdicts) <= {"ok"} and answer == "correct"
        elif kind == "arith_slip":
            assert "arith_error" in verdicts and answer == "correct"
        else:  # wrong_operation: the last step is wrong and so is the answer
            assert verdicts[-1] == "arith_error" and answer == "wrong_value"


def test_no_imperfect_traces_at_fraction_zero():
    config = WarmStartConfig(imperfect_fraction=0.0)
    rng = random.Random(0)
    for task in load_countdown("train")[:200]:
        assert make_trace(task, rng, config)[2] == "solver"


# --- the cached test policy ---


def test_test_policy_is_built_in_the_cache_and_loss_decreases(built_policy, langrl_home):
    path, seconds = built_policy
    assert path == langrl_home / "policies" / default_policy_path("test").name
    record = json.loads((path / RECORD_FILE).read_text())
    assert record["config"] == dataclasses.asdict(POLICY_CONFIGS["test"])
    losses = record["losses"]
    assert len(losses) == POLICY_CONFIGS["test"].steps
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.5 * first, f"loss {first:.3f} -> {last:.3f}"
    # No time limit asserted: on the shared 2-core machines timings vary tenfold.
    print(f"test policy built in {seconds:.1f}s")


def test_second_call_reuses_the_cache(built_policy, langrl_home, monkeypatch):
    path, _ = built_policy
    monkeypatch.setenv("LANGRL_HOME", str(langrl_home))

    def no_rebuild(*args, **kwargs):
        raise AssertionError("ensure_policy rebuilt a cached policy")

    monkeypatch.setattr(warmstart, "build_policy", no_rebuild)
    assert ensure_policy("test", progress=False) == path
    assert default_policy_path("test") == path
    assert path.stat().st_mode & 0o777 == 0o755  # readable by others, unlike mkdtemp's 0o700
    # No temporary build folders are left beside it.
    assert [p.name for p in path.parent.iterdir() if not p.name.endswith(".lock")] == [path.name]


def test_test_policy_loads_and_writes_the_step_format(built_policy):
    path, _ = built_policy
    model = PolicyValueModel.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(str(path))
    task = load_countdown("test")[0]
    ids = tok(countdown_prompt(task), return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.lm.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=40, do_sample=False
        )
        _, values = model(ids)
    text = tok.decode(out[0, ids.shape[1] :])
    assert text.startswith("<step>") and "</step>" in text, text
    # The value head is untrained: its last layer is zero, so V = tanh(0) = 0.
    assert torch.equal(values, torch.zeros_like(values))


def test_auto_tokenizer_of_a_policy_folder_round_trips(built_policy):
    """transformers 5 reloads a qwen2 folder's tokenizer as Qwen2Tokenizer whatever its
    tokenizer_config says: it must give the ids the policy was trained on."""
    path, _ = built_policy
    tok = AutoTokenizer.from_pretrained(str(path))
    text = countdown_prompt(load_countdown("test")[0]) + "<step>7 * 4 = 28</step>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == build_tokenizer()(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text


def test_build_is_deterministic(tmp_path):
    config = WarmStartConfig(preset="test", steps=2, warmup_steps=1, batch_size=4, num_threads=1)
    weights = []
    for name in ("a", "b"):
        model = PolicyValueModel.from_pretrained(
            build_policy(tmp_path / name, config, progress=False)
        )
        weights.append(model.lm.state_dict())
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def _fake_build(calls: list[Path], second_caller: threading.Event):
    """Stand-in for ``build_policy``: records the call and writes a complete-looking policy,
    once ``second_caller`` is set (the other caller is then at the lock, mid-build)."""

    def build(path, config=None, *, progress=True):
        calls.append(Path(path))
        assert second_caller.wait(60), "the second caller never reached the lock"
        (Path(path) / RECORD_FILE).write_text("{}")
        return Path(path)

    return build


def test_concurrent_callers_build_once_and_stale_temp_folders_go(tmp_path, monkeypatch):
    monkeypatch.setenv("LANGRL_HOME", str(tmp_path))
    calls: list[Path] = []
    # Ordered by events, not sleeps: the build finishes only after both callers have
    # reached the build lock, so the second one really arrives mid-build.
    at_lock: list[Path] = []
    second_caller = threading.Event()
    real_lock = warmstart._file_lock

    @contextlib.contextmanager
    def observed_lock(lock_path):
        at_lock.append(lock_path)  # list.append is atomic: no lock of our own needed
        if len(at_lock) == 2:
            second_caller.set()
        with real_lock(lock_path) as exclusive:
            yield exclusive

    monkeypatch.setattr(warmstart, "_file_lock", observed_lock)
    monkeypatch.setattr(warmstart, "build_policy", _fake_build(calls, second_caller))
    config = WarmStartConfig(preset="test", steps=3, warmup_steps=1)
    target = default_policy_path(config=config)
    stale = target.parent / f".{target.name}.killed"  # a build that was SIGKILLed
    stale.mkdir(parents=True)
    with ThreadPoolExecutor(max_workers=2) as pool:
        paths = list(pool.map(lambda _: ensure_policy(config=config, progress=False), range(2)))
    assert paths == [target, target] and len(calls) == 1
    assert not stale.exists()
    assert [p.name for p in target.parent.iterdir() if p.is_dir()] == [target.name]
