"""Console logging of the command-line scripts: quiet by default, ``--verbose`` for the rest.

By default the console shows our progress bars, results and warnings; vLLM's INFO lines
(engine start-up, model loading, KV-cache sizing) and langrl's own INFO logs appear with
``--verbose``. ``setup_logging`` is the one place this is decided; ``scripts/train_agent.py``
and ``scripts/evaluate.py`` call it right after parsing their flags, before anything imports
vLLM.

vLLM's level travels as the ``VLLM_LOGGING_LEVEL`` environment variable: vLLM reads it
when it builds an engine's config (its ``LoggingConfig``) and its engine-core and worker
processes are spawned with this environment and that config, so one variable set here
reaches all of them. A ``VLLM_LOGGING_LEVEL`` the user set is left as it is. The quiet
console also hides the Hugging Face progress bars of model loading and saving ("Loading
weights", "Writing model shards": ``HF_HUB_DISABLE_PROGRESS_BARS``, read when transformers
is imported), unless the user set that variable.
"""

from __future__ import annotations

import logging
import os
import sys

VLLM_LEVEL_VAR = "VLLM_LOGGING_LEVEL"
HF_BARS_VAR = "HF_HUB_DISABLE_PROGRESS_BARS"

# The values this module last put into the environment: it may change them again (a second
# call in one process), while any other value is the user's and stays.
_we_set: dict[str, str | None] = {}


def _set_unless_user_set(name: str, value: str | None) -> None:
    """``os.environ[name] = value`` (``None``: unset) unless the user set ``name``."""
    if os.environ.get(name) not in (None, _we_set.get(name)):
        return
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    _we_set[name] = value


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (pytest swaps it between tests)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr


def setup_logging(verbose: bool = False) -> None:
    """vLLM and langrl at WARNING, or at INFO with ``verbose``. Call before importing vLLM.

    Sets ``VLLM_LOGGING_LEVEL`` unless the user did, and gives the ``langrl`` logger one
    stderr handler (records still propagate, so pytest's ``caplog`` sees them). Idempotent.
    """
    level = "INFO" if verbose else "WARNING"
    _set_unless_user_set(VLLM_LEVEL_VAR, level)
    _set_unless_user_set(HF_BARS_VAR, None if verbose else "1")
    logger = logging.getLogger("langrl")
    logger.setLevel(level)
    for handler in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s [%(name)s] %(message)s"))
    logger.addHandler(handler)
