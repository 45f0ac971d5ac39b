"""The thin CLIs reject bad arguments in one line before starting any engine."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "argv, field",
    [
        (["--model", "/no/such/model"], "model"),
        (["--model", "/tmp", "--k", "0"], "EvalConfig.k"),
        (["--model", "/tmp", "--env", "Nope-v0"], "env_id"),
    ],
)
def test_evaluate_rejects_bad_arguments_before_starting(
    argv, field, capsys, monkeypatch, load_script
):
    import langrl.engine

    def no_engine(*args, **kwargs):
        raise AssertionError("no engine may start on bad arguments")

    monkeypatch.setattr(langrl.engine, "create_engine", no_engine)
    assert load_script("evaluate").main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and field in err


def _sampling_fakes():
    spec = importlib.util.spec_from_file_location(
        "sampling_fakes", ROOT / "tests" / "agents" / "sampling_fakes.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_evaluate_writes_the_whole_result_as_json(tmp_path, capsys, monkeypatch, load_script):
    import json

    import langrl.engine

    fakes = _sampling_fakes()
    engine = fakes.ScriptedEngine({}, default=[fakes.MALFORMED])
    monkeypatch.setattr(langrl.engine, "create_engine", lambda config: engine)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    out = tmp_path / "out" / "eval.json"
    argv = ["--model", str(model), "--k", "2", "--first-problem", "-3", "--quiet"]
    main = load_script("evaluate").main
    assert main([*argv, "--json-out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["task_indices"] == [817, 818, 819]  # the last 3 of the 820 test problems
    assert record["per_problem_correct"] == [0, 0, 0]
    assert (record["k"], record["temperature"], record["seed"]) == (2, 0.2, 0)
    assert record["model"] == str(model) and record["wall_s"] > 0
    assert record["scalars"]["eval/mean_at_k"] == 0.0
    assert record["scalars"]["eval/mean_at_k_ci95"] == 0.0
    # Seeded by default: each problem's requests carry a seed.
    assert all(sampling.seed is not None for _, sampling in engine.requests)
    printed = capsys.readouterr().out
    assert "mean@2" in printed and "+-" in printed and "3 problems" in printed
    # One problem has no interval: strict JSON gets null, not NaN.
    assert main([*argv, "--num-problems", "1", "--json-out", str(out)]) == 0
    assert json.loads(out.read_text())["scalars"]["eval/mean_at_k_ci95"] is None


def test_train_agent_takes_no_flag_prefixes(load_script):
    # argparse's prefix matching took "--mode sync" as "--model sync".
    args, overrides = load_script("train_agent").parse_args(["--mode", "sync", "--mod", "x"])
    assert args.model is None
    assert overrides == ["--mode", "sync", "--mod", "x"]


def test_evaluate_takes_no_flag_prefixes(capsys, load_script):
    with pytest.raises(SystemExit):
        load_script("evaluate").main(["--mod", "x"])  # not --model x
    assert "unrecognized arguments: --mod" in capsys.readouterr().err


def test_train_agent_help_imports_nothing_heavy():
    # --help used to take 6-10 s: the config path imports torch, transformers and the learner.
    import subprocess
    import sys

    code = (
        "import runpy, sys\n"
        "sys.argv = ['train_agent.py', '--help']\n"
        "try:\n"
        f"    runpy.run_path({str(ROOT / 'scripts' / 'train_agent.py')!r}, run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'langrl.learner', 'langrl.training.config')"
        " if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "--agent" in out.stdout
    assert "HEAVY []" in out.stdout
