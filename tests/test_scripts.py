"""The thin CLIs reject bad arguments in one line before starting any engine."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _main(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize(
    "argv, field",
    [
        (["--model", "/no/such/model"], "model"),
        (["--model", "/tmp", "--k", "0"], "EvalConfig.k"),
        (["--model", "/tmp", "--env", "Nope-v0"], "env_id"),
    ],
)
def test_evaluate_rejects_bad_arguments_before_starting(argv, field, capsys, monkeypatch):
    import langrl.engine

    def no_engine(*args, **kwargs):
        raise AssertionError("no engine may start on bad arguments")

    monkeypatch.setattr(langrl.engine, "create_engine", no_engine)
    assert _main("evaluate")(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and field in err
