"""The layers import downward only, and parsing a config stays light.

core (langrl/ outside training/)  <-  envs/ (imports no runtime)  <-  agents/  <-  langrl/training/
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    """Every module a file imports (absolute names), wherever the import statement sits."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _files(folder: str, exclude: str | None = None) -> list[Path]:
    files = sorted((ROOT / folder).rglob("*.py"))
    return [f for f in files if exclude is None or exclude not in f.parts]


@pytest.mark.parametrize("path", _files("langrl", exclude="training"), ids=lambda p: p.name)
def test_core_imports_neither_agents_nor_the_app(path):
    bad = {m for m in _imports(path) if m.startswith(("langrl.agents", "langrl.training"))}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", _files("envs"), ids=lambda p: p.name)
def test_envs_import_nothing_from_the_runtime(path):
    bad = {m for m in _imports(path) if m.startswith("langrl") and not m.startswith("langrl.envs")}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", _files("agents"), ids=lambda p: p.name)
def test_agents_do_not_import_the_app(path):
    bad = {m for m in _imports(path) if m.startswith("langrl.training")}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_parsing_a_config_imports_no_torch_and_refuses_a_bad_value():
    code = (
        "import sys\n"
        "from langrl.training.config import ConfigError, parse_config, load_config\n"
        "for agent in ('mcts', 'cispo', 'bon'):\n"
        "    parse_config('configs/tiny_cpu.yaml', agent=agent)\n"
        "try:\n"
        "    load_config('configs/tiny_cpu.yaml', ['--total_steps', '0'])\n"
        "except ConfigError as err:\n"
        "    print('ERR', err)\n"
        "print('HEAVY', [m for m in ('torch', 'transformers', 'vllm') if m in sys.modules])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    assert "ERR config: total_steps must be an int >= 1, got 0" in out
    assert "HEAVY []" in out
