"""Shared pytest fixtures. Engine fixtures (one real vLLM engine per session) live here.

Fixtures for everyone (engines are started lazily, once per session, on first use):

- ``tiny_policy_path`` (session): a small test policy on disk (tokenizer, Qwen2 LM, value
  head). The warm-started ``langrl.tiny.warmstart.ensure_policy("test")`` model where that
  module exists (it writes the step format), else a random ``build_random_policy`` model.
  Never modified on disk: weight pushes only change running engines.
- ``tiny_engine_config`` (session): ``EngineConfig`` for that policy, sized for tests
  (eager vLLM, 0.5 GiB explicit KV cache: starts in well under a minute on 2 cores).
- ``vllm_engine`` (session): a ``SyncEngine`` over the real vLLM backend. Skips the test
  where vLLM is not installed.
- ``hf_engine`` (session): a ``SyncEngine`` over the plain-transformers backend.
- ``policy_engine``: parametrized over both of the above, for interface tests.
- ``preserve_weights`` (function): call ``preserve_weights(engine)`` before pushing weights
  into a shared session engine; at teardown the weights it had are pushed back (the
  ``policy_version`` keeps counting up: versions are never rewound).
- ``tiny_policy_model`` (function): a fresh ``PolicyValueModel`` loaded from
  ``tiny_policy_path``, i.e. what the learner would start from.
- ``load_script``: ``load_script("train_agent")`` is ``scripts/train_agent.py`` imported as a
  fresh module (not run as ``__main__``): the one way tests reach the command-line scripts.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

from langrl.engine import EngineConfig, SyncEngine, create_engine
from langrl.policy_model import PolicyValueModel

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@pytest.fixture(autouse=True)
def _isolated_console_logging() -> Iterator[None]:
    """Tests that run a script's ``main`` call ``setup_logging`` (the ``langrl`` logger at
    WARNING, ``VLLM_LOGGING_LEVEL`` set): put both back so later tests see the defaults."""
    import logging
    import os

    logger = logging.getLogger("langrl")
    level, handlers = logger.level, list(logger.handlers)
    env = {k: os.environ.get(k) for k in ("VLLM_LOGGING_LEVEL", "HF_HUB_DISABLE_PROGRESS_BARS")}
    yield
    logger.setLevel(level)
    logger.handlers[:] = handlers
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def load_script() -> Callable[[str], ModuleType]:
    """``load_script(name)``: ``scripts/<name>.py`` imported from its file as a new module
    named ``name`` (its ``main``, ``parse_args``... callable; not run as ``__main__``, not put
    in ``sys.modules``), so a test can monkeypatch it freely."""

    def load(name: str) -> ModuleType:
        path = SCRIPTS / f"{name}.py"
        if not path.is_file():
            raise FileNotFoundError(f"load_script: no script {path}")
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def tiny_policy_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of the small test policy (warm-started if available, else random)."""
    try:
        from langrl.tiny.warmstart import ensure_policy
    except ImportError:
        ensure_policy = None
    if ensure_policy is not None:
        return Path(ensure_policy("test", progress=False))
    from langrl.tiny.model import build_random_policy

    return build_random_policy(tmp_path_factory.mktemp("tiny_policy"), preset="test", seed=0)


@pytest.fixture(scope="session")
def tiny_engine_config(tiny_policy_path: Path) -> EngineConfig:
    """Engine settings for tests: fast start, small KV cache, fixed seed."""
    return EngineConfig(
        model=str(tiny_policy_path),
        backend="vllm",
        seed=0,
        enforce_eager=True,  # compiling buys throughput we do not need in tests
        kv_cache_gib=0.5,  # explicit size: skips vLLM's memory-profiling warm-up
        use_chat_template=False,
        startup_timeout_s=300,
    )


@pytest.fixture(scope="session")
def vllm_engine(tiny_engine_config: EngineConfig) -> Iterator[SyncEngine]:
    """The session's real vLLM engine (started once, shut down at the end)."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed (run scripts/setup.sh)")
    engine = create_engine(tiny_engine_config)
    try:
        yield engine
    finally:
        engine.shutdown()


@pytest.fixture(scope="session")
def hf_engine(tiny_engine_config: EngineConfig) -> Iterator[SyncEngine]:
    """The session's plain-transformers engine on the same policy."""
    from dataclasses import replace

    engine = create_engine(replace(tiny_engine_config, backend="hf"))
    try:
        yield engine
    finally:
        engine.shutdown()


@pytest.fixture(params=["vllm", "hf"])
def policy_engine(request: pytest.FixtureRequest) -> SyncEngine:
    """Each backend in turn (the engine-interface contract holds for both)."""
    return request.getfixturevalue(f"{request.param}_engine")


@pytest.fixture
def preserve_weights() -> Iterator[Callable[[SyncEngine], None]]:
    """``preserve_weights(engine)``: restore ``engine``'s current weights after the test."""
    saved: list[tuple[SyncEngine, dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []

    def preserve(engine: SyncEngine) -> None:
        model = engine.engine.model  # the engine's PolicyValueModel copy of what it serves
        lm = {k: v.detach().clone() for k, v in model.lm.state_dict().items()}
        head = {k: v.detach().clone() for k, v in model.value_head.state_dict().items()}
        saved.append((engine, lm, head))

    yield preserve
    for engine, lm, head in reversed(saved):
        engine.load_weights(lm, head)


@pytest.fixture
def tiny_policy_model(tiny_policy_path: Path) -> PolicyValueModel:
    """A fresh learner-side copy of the tiny policy (eval mode, float32)."""
    return PolicyValueModel.from_pretrained(tiny_policy_path).eval()


@pytest.fixture
def offline_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], Path]:
    """An empty local Hugging Face cache, offline (``HF_HUB_OFFLINE=1``), as on machines
    without a hub; ``offline_hub_cache("org/name")`` puts a model's ``config.json`` in it
    (the layout ``huggingface_hub`` downloads into) and returns the snapshot directory."""
    import huggingface_hub.constants

    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def add(repo_id: str) -> Path:
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        snapshot = repo / "snapshots" / ("0" * 40)
        snapshot.mkdir(parents=True)
        (snapshot / "config.json").write_text("{}")
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text("0" * 40)
        return snapshot

    return add
