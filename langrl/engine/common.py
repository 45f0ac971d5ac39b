"""What the vLLM and HF engines share: one implementation of each idea.

- ``ServedEngine``: the part of ``PolicyEngine`` that does not depend on the generator:
  ``values()`` and ``score()`` from a transformers ``PolicyValueModel`` copy of the served
  weights (the very code the learner trains), concurrent calls coalesced into one batched
  forward in a worker thread; ``load_weights`` (blocking, from any thread) and
  ``load_weights_async``; the weight-version gate; the chat-template flag.
- ``find_stop``: stop-string matching with vLLM's semantics (the stop string is kept).
- ``stop_overhang``: what the sampled ids hold beyond a stop string (``Sample.overhang``).
- ``check_model_path``: fail fast, before any engine process starts.
- ``tied_parameter_names`` / ``untie_state``: a tied model's shared tensor is pushed once.

Why ``score()`` uses the value-model copy rather than vLLM ``prompt_logprobs``: it is exactly
the learner's computation (same module, same dtype), it needs no second pass through the
generation scheduler (prompt-logprob requests bypass prefix-cache reads and return logprobs
for the whole prompt), and both backends share it. Parity with vLLM's sampled logprobs is
tested in ``tests/engine``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch

from langrl.engine.base import EngineDiedError, PolicyEngine, PromptTooLongError
from langrl.engine.config import EngineConfig, EngineStartError, model_source_error
from langrl.policy_model import PolicyValueModel, final_hidden_states, token_logprobs

T = TypeVar("T")
R = TypeVar("R")

_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# --- start-up checks ---------------------------------------------------------------------


def check_model_path(config: EngineConfig) -> EngineConfig:
    """Fail fast, before any engine starts; return ``config`` with ``max_model_len`` resolved.

    The model must pass ``model_source_error`` (the check ``langrl.training.config`` makes too: a
    local directory with ``config.json``, or a hub name in the local Hugging Face cache or,
    online, on the hub); ``max_model_len`` must fit a local model's
    ``max_position_embeddings`` (``None`` takes it).
    """
    if not config.model:
        raise EngineStartError("EngineConfig.model is empty: set it to a model directory")
    problem = model_source_error(config.model)
    if problem is not None:
        raise EngineStartError(f"EngineConfig.model: {problem}")
    cfg_file = Path(config.model).expanduser() / "config.json"
    if not cfg_file.is_file():
        return config  # a hub model: max_model_len=None is resolved from the loaded model
    try:
        model_cfg = json.loads(cfg_file.read_text())
    except ValueError as e:
        raise EngineStartError(f"{cfg_file} is not valid JSON: {e}") from None
    limit = model_cfg.get("max_position_embeddings")
    if config.max_model_len is None:
        if limit is None:
            raise EngineStartError(
                f"{cfg_file} has no max_position_embeddings: set EngineConfig.max_model_len"
            )
        return dataclasses.replace(config, max_model_len=int(limit))
    if limit is not None and config.max_model_len > limit:
        raise EngineStartError(
            f"EngineConfig.max_model_len={config.max_model_len} exceeds the model's "
            f"max_position_embeddings={limit} ({cfg_file})"
        )
    return config


def resolve_dtype(config: EngineConfig) -> torch.dtype:
    """``config.dtype`` as a torch dtype; ``"auto"`` reads the checkpoint's config.json."""
    if config.dtype != "auto":
        return _TORCH_DTYPES[config.dtype]
    cfg_file = Path(config.model) / "config.json"
    name = None
    if cfg_file.is_file():
        raw = json.loads(cfg_file.read_text())
        name = raw.get("dtype") or raw.get("torch_dtype")
    return _TORCH_DTYPES.get(str(name), torch.float32)


def load_value_model(config: EngineConfig) -> tuple[PolicyValueModel, Any]:
    """Load the ``PolicyValueModel`` copy and the tokenizer; errors become ``EngineStartError``."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(config.tokenizer_path)
    except Exception as e:  # noqa: BLE001 - any loader error means the same thing to the user
        raise EngineStartError(
            f"cannot load the tokenizer from {config.tokenizer_path!r}: {type(e).__name__}: {e}"
        ) from e
    try:
        device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = PolicyValueModel.from_pretrained(
            config.model, dtype=resolve_dtype(config), device=device
        )
    except Exception as e:  # noqa: BLE001
        raise EngineStartError(
            f"cannot load the model from EngineConfig.model={config.model!r}: "
            f"{type(e).__name__}: {e}"
        ) from e
    model.eval().requires_grad_(False)
    return model, tokenizer


# --- stop strings ------------------------------------------------------------------------


def find_stop(text: str, stops: Sequence[str], new_from: int) -> tuple[int, str] | None:
    """Find the first stop string that ends in ``text[new_from:]`` (the newly added text).

    Returns ``(end, stop)``: the output text is ``text[:end]``, the stop string kept (vLLM's
    ``include_stop_str_in_output=True``). Only matches that end in the new text count, so a
    stop string already scanned is not found twice; the earliest-ending match wins.
    """
    best: tuple[int, str] | None = None
    for stop in stops:
        if not stop:
            continue
        start = max(0, new_from - len(stop) + 1)
        idx = text.find(stop, start)
        if idx >= 0:
            end = idx + len(stop)
            if best is None or end < best[0]:
                best = (end, stop)
    return best


def single_token_stop_id(tokenizer: Any, stop: str) -> int | None:
    """The id of the one token that is exactly ``stop``, or ``None``.

    A stop string that the tokenizer encodes as a single token which decodes back to it
    (the tiny policy's ``</step>``; a special token decodes to ``""`` and never matches)
    can also be given to vLLM as a stop *token*: its scheduler then ends the request in the
    step that sampled it, where a stop string is only found by the front end's
    detokenizer, which then aborts the request while the engine goes on decoding it.
    """
    ids = tokenizer.encode(stop, add_special_tokens=False)
    if len(ids) != 1 or tokenizer.decode(ids, skip_special_tokens=True) != stop:
        return None
    return int(ids[0])


def stop_overhang(
    tokenizer: Any, token_ids: Sequence[int], text: str, stop_reason: str | int | None
) -> str:
    """``Sample.overhang``: the text ``token_ids`` decode to beyond ``text``.

    Both engines cut a sample's text at the end of the stop string it matched but keep
    every sampled id, and a BPE token can run past that end: Qwen2 splits
    ``</step><step>`` as ``'</', 'step', '><', 'step', '>'``, so a sample stopped at
    ``</step>`` by a ``><`` token has ids that decode to ``text + "<"``. Only a stop on a
    string (``stop_reason`` a ``str``) can do that, so only then does this decode (once,
    special tokens skipped, as the engines' text). ``""`` otherwise, and also if ``text``
    is not a prefix of the decode (not seen: byte-level decoding is consistent), rather
    than invent an overhang from model output.
    """
    if not isinstance(stop_reason, str):
        return ""
    decoded = tokenizer.decode(list(token_ids), skip_special_tokens=True)
    return decoded[len(text) :] if decoded.startswith(text) else ""


# --- concurrency helpers -----------------------------------------------------------------


class WeightGate:
    """Readers-writer gate on the event loop: requests share it, a weight push owns it.

    A push waits for in-flight requests to finish and holds new ones back, so every
    ``Generation`` (and value, score) comes from exactly one policy version.
    """

    def __init__(self) -> None:
        self._cond = asyncio.Condition()
        self._readers = 0
        self._writer = False

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._writer)
            self._readers += 1
        try:
            yield
        finally:
            async with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._writer)
            self._writer = True  # from here on new readers wait
            await self._cond.wait_for(lambda: self._readers == 0)
        try:
            yield
        finally:
            async with self._cond:
                self._writer = False
                self._cond.notify_all()


class Coalescer(Generic[T, R]):
    """Batch concurrent calls: items submitted while a batch runs go into the next batch.

    ``fn(items) -> results`` (one result per item, same order) runs in ``executor``, so the
    event loop keeps serving. Each ``submit`` gets back the results of its own items.
    """

    def __init__(
        self,
        fn: Callable[[list[T]], list[R]],
        executor: ThreadPoolExecutor,
        wait_s: float = 0.0,
    ) -> None:
        self._fn = fn
        self._executor = executor
        self._wait_s = wait_s
        self._pending: list[tuple[list[T], asyncio.Future[list[R]]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, items: Sequence[T]) -> list[R]:
        if not items:
            return []
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[R]] = loop.create_future()
        self._pending.append((list(items), fut))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            # Yield once (or wait a few ms) so callers started in the same tick join.
            await asyncio.sleep(self._wait_s)
            batch, self._pending = self._pending, []
            batch = [(items, fut) for items, fut in batch if not fut.done()]  # drop cancelled
            if not batch:
                continue
            flat = [x for items, _ in batch for x in items]
            try:
                results = await loop.run_in_executor(self._executor, self._fn, flat)
            except Exception as e:  # noqa: BLE001 - handed to every waiting caller
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            i = 0
            for items, fut in batch:
                if not fut.done():
                    fut.set_result(results[i : i + len(items)])
                i += len(items)


def token_budget_chunks(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Split row indices (sorted by length) into chunks whose rows x max-length <= budget."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    chunks: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        # Sorted ascending, so lengths[i] is the chunk's padded width if i joins it.
        if cur and (len(cur) + 1) * lengths[i] > budget:
            chunks.append(cur)
            cur = []
        cur.append(i)
    if cur:
        chunks.append(cur)
    return chunks


#: Positions projected onto the vocabulary at once when scoring (``completion_logprobs``):
#: peak logits memory is this x vocabulary x 4 bytes (620 MB for Qwen2's 151,936).
SCORE_CHUNK_POSITIONS = 1024


@torch.no_grad()
def completion_logprobs(
    model: PolicyValueModel, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]
) -> list[list[float]]:
    """Raw (T=1) logprob of each completion token given its prompt: one right-padded forward.

    Exactly the learner's computation (``token_logprobs`` on the final hidden states, float32
    output layer), and like the learner it projects only the completion positions, in
    chunks of ``SCORE_CHUNK_POSITIONS``: never full-vocabulary logits for the whole batch.
    """
    ids, mask = model.right_pad([list(p) + list(c) for p, c in pairs])  # (B, T)
    hidden = final_hidden_states(model.lm, ids, mask)  # (B, T, H)
    # Completion token j of row i sits at len(p) + j and is predicted from the position before.
    rows = [i for i, (p, c) in enumerate(pairs) for _ in c]
    cols = [len(p) - 1 + j for p, c in pairs for j in range(len(c))]
    rows_t = torch.tensor(rows, dtype=torch.long, device=ids.device)  # (N,)
    cols_t = torch.tensor(cols, dtype=torch.long, device=ids.device)  # (N,)
    flat, _ = token_logprobs(
        model.lm,
        hidden[rows_t, cols_t],  # (N, H)
        ids[rows_t, cols_t + 1],  # (N,)
        chunk_size=SCORE_CHUNK_POSITIONS,
        with_entropy=False,
    )
    values = flat.tolist()  # sync point
    out, start = [], 0
    for _, c in pairs:
        out.append(values[start : start + len(c)])
        start += len(c)
    return out


# --- tied weights ------------------------------------------------------------------------


def tied_parameter_names(module: torch.nn.Module) -> dict[str, str]:
    """``{alias: canonical}`` for parameters registered under more than one name.

    The canonical name is the first in module order, as both transformers'
    ``named_parameters()`` and vLLM's ``AutoWeightsLoader`` count it: a Qwen2 with
    ``tie_word_embeddings=True`` gives ``{"lm_head.weight": "model.embed_tokens.weight"}``.
    """
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        canonical = first.setdefault(id(param), name)
        if canonical != name:
            aliases[name] = canonical
    return aliases


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` are views of the same memory (cheap; no data compared)."""
    return (
        a.device == b.device
        and a.dtype == b.dtype
        and a.shape == b.shape
        and a.stride() == b.stride()
        and a.data_ptr() == b.data_ptr()
    )


def untie_state(
    state: Mapping[str, torch.Tensor], aliases: Mapping[str, str]
) -> dict[str, torch.Tensor]:
    """``state`` with every tied alias (``tied_parameter_names``) folded into its canonical
    name, so that the shared tensor is copied and pushed once.

    A state dict of a tied model holds the shared tensor under both names (``state_dict()``
    does; ``Learner.export_weights`` leaves the alias out): the alias is dropped when it is
    the same tensor as the canonical one, or equal to it; an alias given alone stands for
    its canonical name. An alias whose values differ from the canonical tensor is a
    ``ValueError``: the model has one tensor for both, so one of the two would be lost.
    """
    out = dict(state)
    for alias, canonical in aliases.items():
        if alias not in out:
            continue
        tensor = out.pop(alias)
        if canonical not in out:
            out[canonical] = tensor
            continue
        other = out[canonical]
        if _same_tensor(tensor, other):
            continue
        if tensor.shape != other.shape or not torch.equal(
            tensor.detach().to(other.device, other.dtype), other.detach()
        ):
            raise ValueError(
                f"load_weights: {alias!r} is tied to {canonical!r} in this model (one "
                "tensor), but the state gives it other values; push one tensor for both"
            )
    return out


# --- the shared engine base --------------------------------------------------------------


class ServedEngine(PolicyEngine):
    """Common part of ``VLLMEngine`` and ``HFEngine`` (construct through their ``create``).

    Holds the transformers ``PolicyValueModel`` copy of the served weights, a one-thread
    executor where every forward of that copy runs (so forwards and weight loads never
    overlap and the event loop stays free), and the ``WeightGate``.
    """

    def __init__(self, config: EngineConfig, model: PolicyValueModel, tokenizer: Any) -> None:
        if config.max_model_len is None:
            limit = int(model.lm.config.max_position_embeddings)
            config = dataclasses.replace(config, max_model_len=limit)
        self.config = config
        self.tokenizer = tokenizer
        self.policy_version = 0
        self.model = model
        #: ``{alias: canonical}`` of the LM's tied parameters (``tied_parameter_names``).
        self.tied = tied_parameter_names(model.lm)
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="langrl-model")
        self._gate = WeightGate()
        self._closed = False
        #: Set once the serving process is found dead: what every later call raises.
        self._died: str | None = None
        self._values = Coalescer(self._values_batch, self._executor)
        self._scores = Coalescer(self._scores_batch, self._executor)

    # --- prompts ---

    @property
    def use_chat_template(self) -> bool:  # type: ignore[override]
        """``EngineConfig.use_chat_template``: how ``encode_prompt`` renders env prompts."""
        return self.config.use_chat_template

    def _prompt_ids(self, prompt: Sequence[int] | str) -> list[int]:
        """Token ids of a ``generate`` prompt; text is tokenized as is (no template)."""
        if isinstance(prompt, str):
            ids = list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        else:
            ids = [int(t) for t in prompt]
        if not ids:
            raise ValueError("generate() got an empty prompt")
        if len(ids) >= self.config.max_model_len:
            raise PromptTooLongError(
                f"prompt has {len(ids)} tokens, EngineConfig.max_model_len="
                f"{self.config.max_model_len} leaves no room to generate"
            )
        return ids

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the engine was shut down; create a new one")
        if self._died is not None:
            raise EngineDiedError(self._died)

    # --- values and scores ---

    async def values(self, states: Sequence[Sequence[int]]) -> list[float]:
        self._check_open()
        states = [[int(t) for t in s] for s in states]
        if any(not s for s in states):
            raise ValueError("values() got an empty state; a state has at least one token")
        async with self._gate.shared():
            return await self._values.submit(states)

    async def score(
        self, prompt_ids: Sequence[int], completions: Sequence[Sequence[int]]
    ) -> list[list[float]]:
        self._check_open()
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise ValueError("score() needs a non-empty prompt (the first token has no logprob)")
        pairs = [(prompt, [int(t) for t in c]) for c in completions]
        async with self._gate.shared():
            return await self._scores.submit(pairs)

    def _values_batch(self, states: list[list[int]]) -> list[float]:
        out: list[float] = [0.0] * len(states)
        for chunk in token_budget_chunks(
            [len(s) for s in states], self.config.forward_batch_tokens
        ):
            for i, v in zip(
                chunk, self.model.state_values([states[i] for i in chunk]), strict=True
            ):
                out[i] = v
        return out

    def _scores_batch(self, pairs: list[tuple[list[int], list[int]]]) -> list[list[float]]:
        out: list[list[float]] = [[] for _ in pairs]
        todo = [i for i, (_, c) in enumerate(pairs) if c]
        lengths = [len(pairs[i][0]) + len(pairs[i][1]) for i in todo]
        for chunk in token_budget_chunks(lengths, self.config.forward_batch_tokens):
            rows = [todo[j] for j in chunk]
            for i, lp in zip(
                rows, completion_logprobs(self.model, [pairs[i] for i in rows]), strict=True
            ):
                out[i] = lp
        return out

    # --- weights ---

    def load_weights(
        self,
        lm_state: Mapping[str, torch.Tensor],
        value_head_state: Mapping[str, torch.Tensor],
    ) -> int:
        """Blocking weight push from any thread but the engine's loop (see ``load_weights_async``)."""
        return push_blocking(
            self._loop, lambda: self.load_weights_async(lm_state, value_head_state)
        )

    async def load_weights_async(
        self,
        lm_state: Mapping[str, torch.Tensor],
        value_head_state: Mapping[str, torch.Tensor],
    ) -> int:
        """Push new weights: waits for in-flight requests, holds new ones, loads the served
        model and the value-model copy, resets the prefix cache, bumps ``policy_version``."""
        self._check_open()
        # A tied model's shared tensor once: copied once, pushed once (vLLM gets the alias
        # name back as a view of it: ``VLLMEngine._push_served_weights``).
        lm_state = untie_state(lm_state, self.tied)
        self._check_names(lm_state, value_head_state)
        # Copy now: the learner may keep training on its tensors once we return.
        lm = {k: v.detach().to("cpu", copy=True) for k, v in lm_state.items()}
        head = {k: v.detach().to("cpu", copy=True) for k, v in value_head_state.items()}
        async with self._gate.exclusive():
            await self._push_served_weights(lm)
            await self._loop.run_in_executor(self._executor, self._load_copy, lm, head)
            self.policy_version += 1
            return self.policy_version

    def _check_names(
        self, lm_state: Mapping[str, torch.Tensor], head_state: Mapping[str, torch.Tensor]
    ) -> None:
        # Checked before anything is pushed, so the two copies can never diverge.
        known = dict(self.model.lm.named_parameters(remove_duplicate=False))
        known.update(self.model.lm.named_buffers())
        bad = [k for k in lm_state if k not in known]
        # A full state dict is required: vLLM's in-place reload re-processes whole layers.
        # named_parameters() names a tied tensor once (its canonical name), so a tied output
        # weight counts as present when the embedding is (``untie_state`` folded it in).
        missing = [k for k, _ in self.model.lm.named_parameters() if k not in lm_state]
        if missing:
            raise ValueError(
                f"load_weights: LM state lacks {missing[:5]} ({len(missing)} missing); "
                "push the full state_dict"
            )
        if bad:
            raise ValueError(
                f"load_weights: unknown LM parameter names {bad[:5]} (HF names expected)"
            )
        shapes = [
            k for k, v in lm_state.items() if k in known and tuple(v.shape) != tuple(known[k].shape)
        ]
        if shapes:
            raise ValueError(f"load_weights: shape mismatch for {shapes[:5]}")
        head_keys = set(self.model.value_head.state_dict())
        if set(head_state) != head_keys:
            raise ValueError(
                f"load_weights: value head state has keys {sorted(head_state)}, "
                f"expected {sorted(head_keys)}"
            )

    def _load_copy(self, lm: dict[str, torch.Tensor], head: dict[str, torch.Tensor]) -> None:
        # ``lm`` names a tied tensor once (``untie_state``): copying into the canonical
        # parameter updates its aliases, which are the same parameter.
        params = dict(self.model.lm.named_parameters(remove_duplicate=False))
        params.update(self.model.lm.named_buffers())
        with torch.no_grad():
            for name, tensor in lm.items():
                params[name].copy_(tensor)
            self.model.value_head.load_state_dict(head)

    async def _push_served_weights(self, lm: dict[str, torch.Tensor]) -> None:
        """Load ``lm`` into the generator (vLLM) and reset its prefix cache; no-op for HF."""

    def _release_shared(self) -> None:
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)


def push_blocking(loop: asyncio.AbstractEventLoop, push: Callable[[], Awaitable[int]]) -> int:
    """Run an engine's ``load_weights_async`` (``push()``) on its ``loop`` from another
    thread and wait for the new version: the blocking ``load_weights`` of every engine.
    Refused on the loop itself, where waiting would deadlock."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        raise RuntimeError(
            "load_weights() blocks; on the engine's event loop use "
            "`await engine.load_weights_async(...)`"
        )

    async def run() -> int:
        return await push()

    return asyncio.run_coroutine_threadsafe(run(), loop).result()


async def start_in_thread(fn: Callable[[], T], timeout_s: float, what: str) -> T:
    """Run blocking start-up ``fn`` in a daemon thread; ``EngineStartError`` if it is too slow.

    The backstop that makes a stuck start-up an error instead of a hang (vLLM's own
    ready-timeout covers most cases; this covers the rest). A daemon thread, unlike an
    executor's, does not hold up interpreter exit if it never returns.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    # The result travels in a box that is emptied on receipt, so that no finished frame or
    # future keeps the engine alive after its shutdown.
    box: dict[str, Any] = {}

    def settle() -> None:
        if fut.done():  # timed out already: do not leak what came up late
            late = box.pop("value", None)
            if late is not None and hasattr(late, "shutdown"):
                late.shutdown()
            return
        fut.set_result(None)

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            box["error"] = e
        with contextlib.suppress(RuntimeError):  # the loop may be closed by now
            loop.call_soon_threadsafe(settle)

    threading.Thread(target=target, name="langrl-engine-start", daemon=True).start()
    try:
        await asyncio.wait_for(fut, timeout_s)
    except asyncio.TimeoutError:
        raise EngineStartError(
            f"{what} did not start within EngineConfig.startup_timeout_s={timeout_s:g} s"
        ) from None
    if "error" in box:
        raise box.pop("error")
    return box.pop("value")
