"""Local data sets of the reasoning tasks (no network, ever).

Layout of the data directory (``/work/shared/data`` in this project)::

    countdown/{train,test}.jsonl   {"input": [a, b, c, d], "target": t}
    gsm8k/{train,test}.jsonl       {"question": "...", "answer": "... #### 72"}

The directory is ``$LANGRL_DATA`` if set, else ``<repo>/../shared/data`` (relative to this
package's source checkout). ``data_path`` arguments accept the data directory, a task
directory (``.../countdown``) or a single JSONL file in the same format. Loaded files are
cached by (path, size, mtime) and returned as tuples of frozen tasks, so many envs share
one copy.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["DATA_ENV_VAR", "SPLITS", "default_data_dir", "load_jsonl_tasks", "resolve_data_file"]

DATA_ENV_VAR = "LANGRL_DATA"
SPLITS = ("train", "test")

T = TypeVar("T")


def default_data_dir() -> Path:
    """``$LANGRL_DATA``, else ``<repo>/../shared/data``; raises if neither exists."""
    env_value = os.environ.get(DATA_ENV_VAR)
    if env_value:
        path = Path(env_value).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(
                f"{DATA_ENV_VAR}={env_value!r} is not a directory; point it at the folder "
                "holding countdown/ and gsm8k/"
            )
        return path
    # envs/ sits at the repo root (installed as langrl.envs via package-dir).
    candidate = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    if candidate.is_dir():
        return candidate
    raise FileNotFoundError(
        f"no data directory: set the {DATA_ENV_VAR} environment variable to the folder "
        f"holding countdown/ and gsm8k/ (looked for {candidate}), or pass data_path=..."
    )


def resolve_data_file(task_dir: str, split: str, data_path: str | os.PathLike | None) -> Path:
    """The JSONL file for ``task_dir``/``split``, honouring ``data_path`` (see module doc)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    base = default_data_dir() if data_path is None else Path(data_path).expanduser()
    candidates = (
        [base] if base.is_file() else [base / task_dir / f"{split}.jsonl", base / f"{split}.jsonl"]
    )
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"no {task_dir} {split} data: looked for {', '.join(map(str, candidates))}; pass "
        f"data_path= (a JSONL file or a directory) or set {DATA_ENV_VAR}"
    )


def load_jsonl_tasks(path: Path, parse_row: Callable[[dict[str, Any], str], T]) -> tuple[T, ...]:
    """Read ``path`` as JSONL and convert each row with ``parse_row(row, where)``; cached."""
    stat = path.stat()
    return _load_cached(str(path.resolve()), stat.st_size, stat.st_mtime_ns, parse_row)


@lru_cache(maxsize=32)
def _load_cached(path: str, size: int, mtime_ns: int, parse_row: Callable) -> tuple:
    tasks = []
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: invalid JSON ({exc})") from exc
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
            tasks.append(parse_row(row, where))
    if not tasks:
        raise ValueError(f"{path}: no tasks")
    return tuple(tasks)
