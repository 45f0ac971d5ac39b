"""Weight pushes through vLLM's native weight-transfer API, with a shared-memory backend.

vLLM (>= 0.32) has a weight-transfer API for RL: ``AsyncLLM.init_weight_transfer_engine``
once, then per push ``start_weight_update`` / ``update_weights`` (one call per chunk) /
``finish_weight_update``. In the worker a ``WeightTransferEngine`` chosen by
``WeightTransferConfig.backend`` receives the tensors, and start/finish wrap the load in
vLLM's layerwise reload (what ``reload_weights`` does: restore the parameters the CPU
backend repacked, load checkpoint-format tensors, process and repack). vLLM's own backends
(``nccl``, ``ipc``, ``sparse_nccl``, ``nccl_m2n``, ``sharded_rdt``, ``modelexpress``) move
CUDA tensors (NCCL broadcasts, CUDA IPC handles, Ray/NIXL), so none runs on a CPU-only
build; the factory takes custom backends (``WeightTransferEngineFactory.register_engine``).

This module is one: ``langrl_shm``. The frontend writes each chunk of tensors into one file
in ``/dev/shm`` (one copy), the update request carries only its path and the tensors' names,
dtypes, shapes and byte offsets, and the worker maps the file and hands views of it to
``model.load_weights``: no bytes through vLLM's RPC serializer. It needs the frontend and the
workers on one host (always so for ``AsyncLLM`` with the multiprocessing executor).

The worker imports this module through the factory (registered by
``langrl.engine.worker_extension`` at import, which vLLM does before it loads the model), so
it imports only the standard library, torch and vLLM.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from vllm.distributed.weight_transfer.base import (
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)

from langrl.engine import malloc
from langrl.engine.lifetime import owned_file_prefix, sweep_files

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.config.weight_transfer import WeightTransferConfig

#: The name ``WeightTransferConfig(backend=...)`` selects this backend by.
SHM_BACKEND = "langrl_shm"

#: Default size of one chunk file (one ``update_weights`` call). Bounds the shared memory a
#: push holds at once (a tensor larger than this travels alone in its own chunk).
DEFAULT_CHUNK_BYTES = 256 << 20

#: Byte alignment of every tensor inside a chunk (any dtype can be viewed at such offsets).
_ALIGN = 64


def shm_directory() -> str:
    """Where chunk files go: ``/dev/shm`` (RAM-backed) when it exists, else the temp dir."""
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


def chunk_directories() -> list[str]:
    """Every directory ``write_chunk`` may put a chunk file in (its fallback included)."""
    return list(dict.fromkeys([shm_directory(), tempfile.gettempdir()]))


def sweep_stale_chunks() -> list[str]:
    """Remove chunk files whose writer is dead (killed mid-push); return their paths.

    Chunk files are named ``langrl-weights-<pid>-<start>-<pidns>-*`` after the process that
    writes them (``langrl.engine.lifetime.owned_file_prefix``); the engine sweeps them when
    it starts, and a dead trainer's reaper removes its own at once."""
    return sweep_files(chunk_directories())


def _reserved_file(nbytes: int, directories: list[str]) -> tuple[int, str]:
    """A new file of ``nbytes`` whose blocks are allocated, in the first of ``directories``
    with room; ``(fd, path)``.

    ``ftruncate`` alone makes a sparse file, and writing through its mapping on a full
    tmpfs kills the process with SIGBUS (Docker's default /dev/shm is 64 MB, less than one
    chunk of a 1.5B model); ``posix_fallocate`` fails with ENOSPC up front instead, so the
    next directory (the temp dir, on disk) is tried."""
    errors = []
    for directory in dict.fromkeys(directories):  # in order, once each
        fd, path = tempfile.mkstemp(prefix=owned_file_prefix("weights"), dir=directory)
        try:
            os.posix_fallocate(fd, 0, nbytes)
            return fd, path
        except OSError as e:
            os.close(fd)
            os.unlink(path)
            if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                # A file system without fallocate: only a sparse file is possible here.
                fd, path = tempfile.mkstemp(prefix=owned_file_prefix("weights"), dir=directory)
                os.ftruncate(fd, nbytes)
                return fd, path
            errors.append(f"{directory}: {e.strerror}")
    raise OSError(
        errno.ENOSPC,
        f"no room for a {nbytes / 2**20:.0f} MiB weight chunk ({'; '.join(errors)}); "
        "free space there or push with EngineConfig.weight_push='rpc'",
    )


@dataclass
class ShmInitInfo(WeightTransferInitInfo):
    """Nothing to rendezvous: frontend and workers share a host's file system."""


@dataclass
class ShmUpdateInfo(WeightTransferUpdateInfo):
    """One chunk: a file of ``nbytes`` holding each tensor at its byte offset."""

    path: str
    nbytes: int
    names: list[str]
    dtype_names: list[str]
    shapes: list[list[int]]
    offsets: list[int]

    def __post_init__(self) -> None:
        n = len(self.names)
        if not len(self.dtype_names) == len(self.shapes) == len(self.offsets) == n:
            raise ValueError(
                "ShmUpdateInfo: names, dtype_names, shapes and offsets differ in length "
                f"({n}, {len(self.dtype_names)}, {len(self.shapes)}, {len(self.offsets)})"
            )


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def plan_chunks(
    state: Mapping[str, torch.Tensor], chunk_bytes: int | None = None
) -> list[list[str]]:
    """Split tensor names, in order, into chunks of at most ``chunk_bytes`` (aligned;
    default ``DEFAULT_CHUNK_BYTES``). A layer may span chunks: vLLM's layerwise reload
    processes a layer once all its tensors have arrived, whichever call brought them."""
    if chunk_bytes is None:
        chunk_bytes = DEFAULT_CHUNK_BYTES
    chunks: list[list[str]] = []
    cur: list[str] = []
    size = 0
    for name, t in state.items():
        n = _aligned(_nbytes(t))
        if cur and size + n > chunk_bytes:
            chunks.append(cur)
            cur, size = [], 0
        cur.append(name)
        size += n
    if cur:
        chunks.append(cur)
    return chunks


def write_chunk(
    state: Mapping[str, torch.Tensor],
    names: list[str],
    directory: str | None = None,
    aliases: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Write ``names`` of ``state`` into a fresh shared-memory file; return the update info
    (a plain dict, as ``AsyncLLM.update_weights`` sends it). The caller unlinks
    ``info["path"]`` once the worker has loaded it (a worker that still maps the file keeps
    its pages until it lets go).

    ``aliases`` (``{alias: canonical}``: tied parameters) lists each alias of a written name
    right after it at the same offset: the bytes are in the file once, the worker reads
    them under both names."""
    extra: dict[str, list[str]] = {}
    for alias, canonical in (aliases or {}).items():
        if alias not in state:
            extra.setdefault(canonical, []).append(alias)
    offsets, total = [], 0
    for name in names:
        offsets.append(total)
        total += _aligned(_nbytes(state[name]))
    total = max(total, 1)
    fd, path = _reserved_file(total, [directory or shm_directory(), tempfile.gettempdir()])
    try:
        buf = torch.from_file(path, shared=True, size=total, dtype=torch.uint8)
        for name, off in zip(names, offsets, strict=True):
            t = state[name].detach()
            buf[off : off + _nbytes(t)].view(t.dtype).view(t.shape).copy_(t)
        del buf  # unmap: the data is in the file
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(fd)
    listed: list[tuple[str, str, int]] = []  # (name, the tensor's name in state, offset)
    for name, off in zip(names, offsets, strict=True):
        listed.append((name, name, off))
        listed.extend((alias, name, off) for alias in extra.get(name, []))
    return {
        "path": path,
        "nbytes": total,
        "names": [name for name, _, _ in listed],
        "dtype_names": [str(state[k].dtype).removeprefix("torch.") for _, k, _ in listed],
        "shapes": [list(state[k].shape) for _, k, _ in listed],
        "offsets": [off for _, _, off in listed],
    }


def read_chunk(info: ShmUpdateInfo) -> list[tuple[str, torch.Tensor]]:
    """The worker's side of ``write_chunk``: views of the mapped file, no copy.

    The mapping is private (copy-on-write), so nothing the loader does writes back.
    """
    buf = torch.from_file(info.path, shared=False, size=info.nbytes, dtype=torch.uint8)
    out = []
    for name, dtype, shape, off in zip(
        info.names, info.dtype_names, info.shapes, info.offsets, strict=True
    ):
        dt = getattr(torch, dtype)
        n = int(torch.Size(shape).numel()) * torch.empty((), dtype=dt).element_size()
        out.append((name, buf[off : off + n].view(dt).view(shape)))
    return out


class SharedMemoryWeightTransferEngine(WeightTransferEngine[ShmInitInfo, ShmUpdateInfo]):
    """Worker side of ``langrl_shm``: checkpoint-format tensors from shared-memory files,
    loaded under vLLM's layerwise reload (start/finish), as the built-in ``ipc`` backend."""

    init_info_cls = ShmInitInfo
    update_info_cls = ShmUpdateInfo

    def __init__(
        self,
        config: WeightTransferConfig,
        vllm_config: VllmConfig,
        device: torch.device,
        model: torch.nn.Module,
    ) -> None:
        super().__init__(config, vllm_config, device, model)
        self.tensors_loaded = 0

    def init_transfer_engine(self, init_info: ShmInitInfo) -> None:
        """No rendezvous: the files are the data plane."""

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        self.tensors_loaded = 0
        malloc.begin_push()  # ended in finish_weight_update (see langrl.engine.malloc)
        initialize_layerwise_reload(self.model)

    def update_weights(self, update_info: dict[str, Any]) -> None:
        # The base class ends with torch.accelerator.synchronize(), which has no device to
        # wait for on a CPU-only build; only a GPU worker (host -> device copies) needs it.
        self.receive_weights(self.parse_update_info(update_info))
        if self.device.type != "cpu":
            torch.accelerator.synchronize()

    def receive_weights(self, update_info: ShmUpdateInfo) -> None:
        weights = read_chunk(update_info)
        self.model.load_weights(weights)
        self.tensors_loaded += len(weights)

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        try:
            finalize_layerwise_reload(self.model, self.model_config)
        finally:
            malloc.end_push()

    def shutdown(self) -> None:
        """Nothing held between pushes."""


def register_backend() -> bool:
    """Register ``langrl_shm`` with vLLM's weight-transfer factory (idempotent, lazy: the
    worker imports this module only when it builds the engine). False without the API."""
    try:
        from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory
    except ImportError:
        return False
    with contextlib.suppress(ValueError):  # already registered in this process
        WeightTransferEngineFactory.register_engine(
            SHM_BACKEND, __name__, SharedMemoryWeightTransferEngine.__name__
        )
    return True
