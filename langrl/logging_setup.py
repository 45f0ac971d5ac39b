"""Console logging of the command-line scripts: quiet by default, ``--verbose`` for the rest.

By default the console shows our progress bars, results and warnings; vLLM's INFO lines
(engine start-up, model loading, KV-cache sizing) and langrl's own INFO logs appear with
``--verbose``. ``setup_logging`` is the one place this is decided; ``scripts/train_agent.py``
and ``scripts/evaluate.py`` call it right after parsing their flags, before anything imports
vLLM.

vLLM's level travels as the ``VLLM_LOGGING_LEVEL`` environment variable: vLLM reads it
when it builds an engine's config (its ``LoggingConfig``) and its engine-core and worker
processes are spawned with this environment and that config, so one variable set here
reaches all of them. A ``VLLM_LOGGING_LEVEL`` the user set is left as it is.
"""

from __future__ import annotations

import logging
import os
import sys

VLLM_LEVEL_VAR = "VLLM_LOGGING_LEVEL"

# The level this module last put into the environment: it may change it again (a second
# call in one process), while any other value is the user's and stays.
_level_we_set: str | None = None


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
    global _level_we_set
    level = "INFO" if verbose else "WARNING"
    if os.environ.get(VLLM_LEVEL_VAR) in (None, _level_we_set):
        os.environ[VLLM_LEVEL_VAR] = level
        _level_we_set = level
    logger = logging.getLogger("langrl")
    logger.setLevel(level)
    for handler in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s [%(name)s] %(message)s"))
    logger.addHandler(handler)
