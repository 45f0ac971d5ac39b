"""The policy-server interface every agent talks to.

One engine serves many concurrent callers (MCTS workers, CISPO groups, evaluation):
callers ``await engine.generate(...)`` concurrently and the engine batches them. Agent code
talks only to this interface (plus ``SyncEngine`` for blocking callers), so that a Ray actor
can later stand behind it without touching the agents.

Logprob conventions (documented once, here):
- ``Sample.logprobs`` are per-token logprobs under the *sampling distribution*, i.e. after
  temperature scaling (vLLM ``logprobs_mode="processed_logprobs"``). They are the behaviour
  policy for importance ratios; the learner scales its logits by the same temperature.
- ``PolicyEngine.score`` returns *raw* (temperature 1) per-token logprobs of given
  continuations: what tree-search priors use.
"""

from __future__ import annotations

import abc
import contextlib
import contextvars
import itertools
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # type hints only: the interface itself imports no torch
    import torch


class PromptTooLongError(ValueError):
    """A prompt leaves no room to generate within the engine's ``max_model_len``.

    Agents skip such a task (and count it) instead of failing a whole rollout: a data set
    can hold a few prompts longer than a small model's context.
    """


class EngineDiedError(RuntimeError):
    """The engine's serving process died (vLLM's EngineCore or a worker: killed, out of
    memory). Every pending and later call raises it; shut the engine down, create a new one.
    """


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample one request.

    Attributes:
        n: Number of independent samples for the prompt.
        max_tokens: Maximum new tokens per sample.
        temperature: Sampling temperature (> 0; 1.0 samples the raw policy).
        top_p: Nucleus sampling mass (1.0 = off). Importance ratios assume 1.0.
        stop: Stop strings; the matched stop string is kept in the sample's text and ids
            (the ids may run past it: ``Sample.overhang``).
        seed: Per-request seed for reproducible sampling; ``None`` = engine's RNG.
    """

    n: int = 1
    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"SamplingConfig.n must be >= 1, got {self.n}")
        if self.max_tokens < 1:
            raise ValueError(f"SamplingConfig.max_tokens must be >= 1, got {self.max_tokens}")
        if not self.temperature > 0:
            raise ValueError(f"SamplingConfig.temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingConfig.top_p must be in (0, 1], got {self.top_p}")


@dataclass
class Sample:
    """One sampled continuation.

    Attributes:
        token_ids: Sampled token ids (including a matched stop string's tokens).
        text: Decoded text of ``token_ids`` (special tokens skipped), cut at the end of a
            matched stop string (kept).
        logprobs: Per-token logprobs under the sampling distribution (see module doc).
        cumulative_logprob: ``sum(logprobs)``.
        finish_reason: ``"stop"`` (stop string / EOS) or ``"length"`` (hit max_tokens).
        stop_reason: The stop string matched, the stop token id, or ``None``.
        overhang: The text ``token_ids`` decode to beyond ``text`` when a stop string
            ended inside the last token (BPE merges such as ``"><"`` across
            ``</step><step>``), else ``""``: ``text + overhang == decode(token_ids)``
            (special tokens skipped). It is already in the ids, so whoever continues
            from them owes it to the env (MCTS prepends it to the next step's text).
    """

    token_ids: list[int]
    text: str
    logprobs: list[float]
    cumulative_logprob: float
    finish_reason: str
    stop_reason: str | int | None = None
    overhang: str = ""


@dataclass
class Generation:
    """The answer to one ``generate`` call: ``n`` samples of one prompt."""

    prompt_ids: list[int]
    samples: list[Sample]
    policy_version: int
    cached_prompt_tokens: int = 0
    """Prompt tokens the engine's prefix cache served instead of computing (vLLM's
    ``num_cached_tokens``: whole KV blocks only; with ``n > 1``, one sample's prefill, as
    vLLM reports it). 0 for engines without a prefix cache."""


def encode_prompt(tokenizer: Any, info: Mapping[str, Any], use_chat_template: bool) -> list[int]:
    """Token ids of an env's prompt (its ``reset``/``task_info`` dict): the chat messages
    through the tokenizer's chat template when asked for and the tokenizer has one, else the
    compact plain prompt. Encoded once per episode; every later token id comes from the
    engine, so text is never re-tokenized."""
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        # return_dict=False: transformers 5 returns a BatchEncoding dict by default.
        ids = tokenizer.apply_chat_template(
            list(info["messages"]), add_generation_prompt=True, tokenize=True, return_dict=False
        )
        return [int(t) for t in ids]
    return list(tokenizer(info["prompt"], add_special_tokens=False)["input_ids"])


# --- call affinity ------------------------------------------------------------------------

_ROUTE_KEY: contextvars.ContextVar[Hashable | None] = contextvars.ContextVar(
    "langrl_route_key", default=None
)
_ROUTE_KEYS = itertools.count()


@contextlib.contextmanager
def same_replica(key: Hashable | None = None) -> Iterator[Hashable]:
    """Ask that every engine call made inside this block (by this coroutine and the tasks it
    starts meanwhile) go to one engine replica: a tree search's calls share prefixes, which
    that replica's prefix cache then holds. ``key`` defaults to a fresh one. A hint: a
    single engine ignores it, and a replicated one moves the key to another replica only
    if its replica dies.

    It is a context variable, so tasks created inside the block inherit it and concurrent
    searches each keep their own."""
    key = ("route", next(_ROUTE_KEYS)) if key is None else key
    token = _ROUTE_KEY.set(key)
    try:
        yield key
    finally:
        _ROUTE_KEY.reset(token)


def route_key() -> Hashable | None:
    """The ``same_replica`` key of the calling context, or ``None``."""
    return _ROUTE_KEY.get()


class PolicyEngine(abc.ABC):
    """Async policy server: generation, scoring, values, weight sync.

    Implementations: ``VLLMEngine`` (default) and ``HFEngine`` (plain transformers).
    All coroutine methods are safe to call concurrently from one event loop.
    """

    #: Hugging Face tokenizer of the served model.
    tokenizer: object
    #: Incremented by every ``load_weights``; samples carry the version that produced them.
    policy_version: int = 0
    #: Whether ``encode_prompt`` renders an env's chat messages through the tokenizer's chat
    #: template: a property of the served model (the served engines read
    #: ``EngineConfig.use_chat_template``). A tokenizer without a template gets the plain
    #: prompt either way.
    use_chat_template: bool = False

    def encode_prompt(self, info: Mapping[str, Any]) -> list[int]:
        """Token ids of an env's prompt (its ``info`` dict from ``reset``), chat-templated per
        ``use_chat_template``. Every agent and evaluation opens its episodes with it, so
        training and evaluation prompts always match."""
        return encode_prompt(self.tokenizer, info, self.use_chat_template)

    @abc.abstractmethod
    async def generate(self, prompt: Sequence[int] | str, sampling: SamplingConfig) -> Generation:
        """Sample ``sampling.n`` continuations of ``prompt`` (token ids, or text to tokenize)."""

    @abc.abstractmethod
    async def score(
        self, prompt_ids: Sequence[int], completions: Sequence[Sequence[int]]
    ) -> list[list[float]]:
        """Raw (temperature 1) per-token logprobs of each completion given ``prompt_ids``."""

    @abc.abstractmethod
    async def values(self, states: Sequence[Sequence[int]]) -> list[float]:
        """V(s) in [-1, 1] for each state (token ids), from the learner's value head."""

    @abc.abstractmethod
    def load_weights(
        self,
        lm_state: Mapping[str, torch.Tensor],
        value_head_state: Mapping[str, torch.Tensor],
    ) -> int:
        """Push new policy weights (HF parameter names) and value head; return the new version.

        Resets the prefix cache. Blocking; call between generation rounds or from a thread.
        """

    def telemetry(self) -> dict[str, float]:
        """Scalars about the serving itself for the run's ``perf/`` tags (replicas alive,
        requests per replica, ...); ``{}`` for a single engine."""
        return {}

    @abc.abstractmethod
    def shutdown(self) -> None:
        """Release the engine (processes, memory). Idempotent."""
