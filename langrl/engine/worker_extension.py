"""vLLM worker extension: load pushed weights into the running model.

vLLM mixes this class into its worker (``worker_extension_cls=
"langrl.engine.worker_extension.WeightSyncExtension"``); ``VLLMEngine`` calls its methods with
``collective_rpc``. This module is imported inside vLLM's worker process, so it imports
nothing from langrl beyond the standard library and torch - except that, on import, it
registers langrl's shared-memory weight-transfer backend (``langrl.engine.weight_transfer``,
loaded lazily by vLLM's factory) where vLLM has that API: vLLM imports the extension before
it loads the model and builds the configured ``WeightTransferEngine``.

Tensors travel as ``(name, dtype, shape, bytes)`` records: vLLM's RPC serializer turns
untyped tensors (and tuples) in ``collective_rpc`` arguments into plain lists, so we encode
them ourselves. ``encode_weights`` (frontend) and ``decode_weights`` (worker) are the pair.
A tied tensor (``lm_head.weight`` of a model with ``tie_word_embeddings``) travels once: its
alias record carries the canonical name instead of bytes, and decodes to the same tensor.

Importing it also keeps one harmless vLLM reload warning off the console, in every process
(``install_reload_log_filter``: why it is harmless is written beside it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import torch

# One entry per tensor: [name, dtype name, shape, raw bytes], or for a tied alias
# [name, dtype name, shape, canonical name] (a str: the tensor of that earlier record).
WeightRecord = list


def encode_weights(
    state: Mapping[str, torch.Tensor], aliases: Mapping[str, str] | None = None
) -> list[WeightRecord]:
    """Tensors -> msgpack-friendly records (one copy of the data, as bytes).

    ``aliases`` (``{alias: canonical}``, ``langrl.engine.common.tied_parameter_names``) adds
    a bytes-free record for each alias whose canonical name is in ``state``, right after it.
    """
    by_canonical: dict[str, list[str]] = {}
    for alias, canonical in (aliases or {}).items():
        if alias not in state:
            by_canonical.setdefault(canonical, []).append(alias)
    records = []
    for name, tensor in state.items():
        t = tensor.detach().to("cpu").contiguous()
        dtype, shape = str(t.dtype).removeprefix("torch."), list(t.shape)
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        records.append([name, dtype, shape, raw])
        records.extend([alias, dtype, shape, name] for alias in by_canonical.get(name, []))
    return records


def decode_weights(records: Iterable[WeightRecord]) -> list[tuple[str, torch.Tensor]]:
    """Records -> ``[(name, tensor), ...]`` as ``model.load_weights`` takes them (an alias
    record gives the very tensor of its canonical record)."""
    out = []
    tensors: dict[str, torch.Tensor] = {}
    for name, dtype, shape, raw in records:
        if isinstance(raw, str):
            tensor = tensors[raw]
        else:
            flat = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
            tensor = flat.view(getattr(torch, dtype)).reshape(shape)
        tensors[name] = tensor
        out.append((name, tensor))
    return out


class WeightSyncExtension:
    """Methods added to vLLM's worker (``self.model_runner`` is the worker's)."""

    def langrl_load_weights(self, records: list[WeightRecord]) -> int:
        """Load a full set of HF-named LM weights (vLLM's loader maps and fuses them).

        Goes through the runner's ``reload_weights`` where it exists (vLLM >= 0.32): after
        the first load, vLLM's CPU backend repacks every linear weight for oneDNN and drops
        the original parameter, so a bare ``model.load_weights`` fails there (float32:
        "'Parameter' object has no attribute 'weight_loader'") or leaves the packed copy
        stale. ``reload_weights`` restores the parameters, loads, and repacks. Older vLLM
        falls back to ``model.load_weights``. Returns how many tensors arrived.
        """
        from langrl.engine.malloc import push_allocations

        with push_allocations():
            weights = decode_weights(records)
            runner = self.model_runner  # type: ignore[attr-defined]
            if hasattr(runner, "reload_weights"):
                runner.reload_weights(weights_iterator=iter(weights), is_checkpoint_format=True)
            else:
                runner.model.load_weights(weights=weights)
            return len(weights)

    def langrl_weight_checksum(self) -> float:
        """Sum of every parameter (float64): a cheap check that a push arrived.

        Only what is still a parameter counts: vLLM's CPU backend repacks every linear
        weight for its GEMM kernels (oneDNN / sgl) and leaves an empty parameter, so on CPU
        this sums embeddings, norms and biases (``benchmarks/bench_weight_push.py`` checks
        the linear weights through logprobs instead)."""
        model = self.model_runner.model  # type: ignore[attr-defined]
        return float(sum(p.detach().double().sum().item() for p in model.parameters()))


# vLLM's layerwise reload (the runner's ``reload_weights`` on the "rpc" path, the weight-
# transfer engine's start/finish on "shm") warns "<layer class>: Failed to load weights" for
# each layer that has tensors and received none, then puts that layer's tensors from before
# the push back. vLLM's plain ``RotaryEmbedding`` (one instance shared by all layers) is such
# a layer at every push, and harmlessly so: its only tensor is the non-persistent
# ``cos_sin_cache`` buffer, computed at start from rope_theta and the context length. It is
# not a weight, no checkpoint or learner state holds it, and it must not change. After a
# push it is the same tensor, equal to a fresh computation, and served logprobs match the
# learner's (tests/engine/test_weight_push.py; tests/test_logging.py checks the console).
# So that one message for that one class stays off the console. The same warning for any
# other layer is a weight the push missed (``FourierRotaryEmbedding`` has learned
# coefficients, say) and still shows.
_LAYERWISE_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"
_RELOAD_MISS = "%s: Failed to load weights"


class RotaryCacheReloadFilter(logging.Filter):
    """Drops vLLM's "RotaryEmbedding: Failed to load weights" (see above); passes the rest."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == _RELOAD_MISS and record.args == ("RotaryEmbedding",))


def install_reload_log_filter() -> None:
    """Add ``RotaryCacheReloadFilter`` to vLLM's layerwise-reload logger (once per process;
    vLLM's ``dictConfig`` keeps a logger's filters). Runs on import, in vLLM's worker too."""
    logger = logging.getLogger(_LAYERWISE_LOGGER)
    if not any(isinstance(f, RotaryCacheReloadFilter) for f in logger.filters):
        logger.addFilter(RotaryCacheReloadFilter())


def _register_weight_transfer_backend() -> None:
    try:
        from langrl.engine.weight_transfer import register_backend
    except ImportError:  # no vLLM, or one without the weight-transfer API (< 0.32)
        return
    register_backend()


install_reload_log_filter()
_register_weight_transfer_backend()
