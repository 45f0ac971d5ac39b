"""Small helpers shared by the sampling agents (CISPO, best-of-N) and evaluation.

Only bookkeeping lives here: the sampling agents' shared config fields
(``SamplingAgentConfig``), opening episodes (env reset -> start state + prompt ids) and
summarising graded samples as metrics. Sampling and grading themselves are
``agents.rollout.sample_and_grade``; losses are the learner's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langrl.agents.base import request_seed_base, split_task_seed
from langrl.agents.rollout import GradedSample, sample_and_grade
from langrl.checks import check_int, check_ints
from langrl.engine.base import PolicyEngine, PromptTooLongError, SamplingConfig
from langrl.envs import make_env
from langrl.trajectory import Trajectory

#: Final reasons of a well-formed, legal answer (right or wrong value).
FORMAT_OK_REASONS = frozenset({"correct", "wrong_value"})


@dataclass
class SamplingAgentConfig:
    """Rollout settings shared by the agents that sample whole answers in groups (CISPO's
    ``CISPOConfig``, best-of-N's ``BestOfNConfig``); each adds its group size and how it
    turns a group into trajectories. Bad values are refused naming the subclass's field."""

    num_prompts: int = 8
    """Prompts per ``collect`` call when the trainer picks the tasks."""
    max_tokens: int = 128
    """Most new tokens per complete answer (prompt excluded)."""
    temperature: float = 1.0
    """Sampling temperature of every answer (> 0; 1 samples the policy as it is)."""
    seed: int | None = None
    """Mixed into the per-task seeds a training run hands out (``langrl.agents.base``:
    ``task_seeds``), which seed every request; ``None`` (default) = those seeds alone, which
    follow the run's ``seed``. Tasks without a seed (the agent used on its own): a base of
    per-call request seeds, ``None`` = the engine's RNG. Seeded requests cost vLLM some
    batching speed."""
    num_text_samples: int = 2
    """Transcripts returned for TensorBoard's text tab per ``collect``."""

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_ints(self, {"num_prompts": 1, "max_tokens": 1, "num_text_samples": 0})
        check_int(owner, "seed", self.seed, optional=True)
        if not self.temperature > 0:
            raise ValueError(f"{owner}.temperature must be > 0, got {self.temperature}")


@dataclass
class Episode:
    """A task opened in the env: where sampling starts from. ``task`` holds the env's reset
    options; ``seed`` is the task's sampling seed, when the task carried one."""

    task: Mapping[str, Any]
    start_state: Any
    prefix_ids: list[int]
    prompt: str
    seed: int | None = None


def open_episodes(
    env: Any, engine: PolicyEngine, tasks: Sequence[Mapping[str, Any]]
) -> list[Episode]:
    """Reset ``env`` to each task and encode its prompt once, as the engine's served model
    wants it (``engine.encode_prompt``: chat template or plain prompt). A task's sampling
    seed (``TASK_SEED_KEY``) is kept on the episode, not passed to the env."""
    episodes = []
    for task in tasks:
        options, seed = split_task_seed(task)
        _, info = env.reset(options=options)
        episodes.append(
            Episode(
                task=options,
                start_state=env.get_state(),
                prefix_ids=engine.encode_prompt(info),
                prompt=info["prompt"],
                seed=seed,
            )
        )
    return episodes


async def sample_groups(
    engine: PolicyEngine,
    env: Any,
    episodes: Sequence[Episode],
    *,
    n: int,
    max_tokens: int,
    temperature: float,
    seed: int | None,
    call: int,
) -> list[list[GradedSample]]:
    """``n`` graded completions for every episode, all requested at once so that the engine
    batches them (continuous batching). An episode with a task seed gets a request seed
    from it (mixed with ``seed`` when set: ``request_seed_base``), which depends on nothing
    else; otherwise, with ``seed`` set, request ``i`` of rollout ``call`` gets its own
    reproducible seed. A task whose prompt does not fit the engine's context gets an empty
    group."""

    def sampling(i: int) -> SamplingConfig:
        request_seed = request_seed_base(seed, episodes[i].seed)
        if request_seed is None and seed is not None:
            request_seed = (seed * 1_000_003 + call) * 100_003 + i
        return SamplingConfig(
            n=n, max_tokens=max_tokens, temperature=temperature, seed=request_seed
        )

    async def one(i: int, ep: Episode) -> list[GradedSample]:
        try:
            return await sample_and_grade(engine, env, ep.start_state, ep.prefix_ids, sampling(i))
        except PromptTooLongError:
            return []  # counted by ``summarize_groups``; the rest of the rollout goes on

    return list(await asyncio.gather(*(one(i, ep) for i, ep in enumerate(episodes))))


class GroupSamplingAgent:
    """Shared body of the agents that sample whole answers in groups (CISPO, best-of-N):
    they differ only in which samples become Trajectories and with what advantages.

    The config is a ``SamplingAgentConfig``. Subclasses set ``name`` and ``config_class``
    (see ``langrl.agents.base.Agent``); they need only rollouts of an env.
    """

    name = ""
    env_uses: tuple[str, ...] = ("rollouts",)
    task_seeds = True  # seeds every request from its task's seed (langrl.agents.base.Agent)

    @classmethod
    def learner_defaults(cls, config: Any) -> dict[str, Any]:
        """No learner field follows from a sampling agent unless it says so (CISPO does)."""
        return {}

    def __init__(
        self, config: Any, env_id: str, env_kwargs: Mapping[str, Any] | None, engine: PolicyEngine
    ) -> None:
        self.config = config
        self.engine = engine
        self.env = make_env(env_id, env_kwargs)
        self._num_calls = 0

    async def sample(
        self, tasks: Sequence[Mapping[str, Any]], n: int
    ) -> tuple[list[Episode], list[list[GradedSample]]]:
        """Open every task and sample ``n`` graded completions of each, all concurrently."""
        cfg = self.config
        episodes = open_episodes(self.env, self.engine, tasks)
        call = self._num_calls
        self._num_calls += 1
        groups = await sample_groups(
            self.engine,
            self.env,
            episodes,
            n=n,
            max_tokens=cfg.max_tokens,
            temperature=cfg.temperature,
            seed=cfg.seed,
            call=call,
        )
        return episodes, groups

    def trajectory(
        self, episode: Episode, g: GradedSample, advantages: list[float] | None
    ) -> Trajectory:
        """The training record of one graded sample: exactly the engine's ids and logprobs."""
        return Trajectory(
            prompt_ids=list(episode.prefix_ids),
            completion_ids=list(g.sample.token_ids),
            behaviour_logprobs=list(g.sample.logprobs),
            reward=g.reward,
            advantages=advantages,
            temperature=self.config.temperature,  # what `sample` drew it at
            policy_version=g.policy_version,
            agent=self.name,
            info={
                "task": dict(episode.task),
                "text": g.sample.text + g.sample.overhang,  # the decode of the trained ids
                "reason": g.info.get("reason"),
            },
        )


def is_correct(g: GradedSample) -> bool:
    return bool(g.info.get("is_correct", g.info.get("reason") == "correct"))


def is_format_ok(g: GradedSample) -> bool:
    return g.info.get("reason") in FORMAT_OK_REASONS


def summarize(groups: Sequence[Sequence[GradedSample]]) -> dict[str, float]:
    """Reward / correctness / format / length statistics of a rollout's groups of graded
    samples (``train/``, ``gen/`` tags). Empty groups are prompts that did not fit the
    engine's context (``gen/skipped_prompts``)."""
    graded = [g for group in groups for g in group]
    skipped = {"gen/skipped_prompts": float(sum(not group for group in groups))}
    n = len(graded)
    if n == 0:
        return {"gen/samples": 0.0, "gen/tokens": 0.0, **skipped}
    rewards = [g.reward for g in graded]
    mean = sum(rewards) / n
    lengths = [len(g.sample.token_ids) for g in graded]
    return {
        "train/reward_mean": mean,
        "train/reward_std": (sum((r - mean) ** 2 for r in rewards) / n) ** 0.5,
        "train/correct_frac": sum(map(is_correct, graded)) / n,
        "train/format_ok_frac": sum(map(is_format_ok, graded)) / n,
        "gen/samples": float(n),
        "gen/tokens": float(sum(lengths)),
        "gen/completion_len_mean": sum(lengths) / n,
        "gen/truncated_frac": sum(g.sample.finish_reason == "length" for g in graded) / n,
        **skipped,
    }


def transcript(episode: Episode, g: GradedSample) -> str:
    """Human-readable record of one sample for TensorBoard's text tab."""
    reason = g.info.get("reason", "?")
    return f"{episode.prompt}{g.sample.text}\n-> reward {g.reward:+.3f} ({reason}), v{g.policy_version}"
