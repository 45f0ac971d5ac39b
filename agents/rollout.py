"""Sample whole completions from a state and grade them with the environment.

Shared by every agent that samples complete answers (CISPO, best-of-N, evaluation, and MCTS
when it finishes a trajectory the tree left short). The engine samples ids; the env grades
the text, split into its step/answer actions by ``langrl.envs.split_actions``: one grader
for all agents. Tag names (and so the stop strings) are the env's own ``ACTION_TAGS``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from langrl.engine.base import PolicyEngine, Sample, SamplingConfig
from langrl.envs import action_tags, split_actions


@dataclass
class GradedSample:
    """One sampled completion and what the environment made of it.

    Attributes:
        sample: The engine's sample (token ids, text, sampling-distribution logprobs).
        reward: Reward of the final transition (the episode's reward).
        terminated: The episode ended by an answer or a malformed action.
        truncated: The episode hit its step limit.
        info: The env's info dict of the final transition (failure reason, parsed value).
        final_state: Env state after the completion (for chaining, e.g. tree search).
        policy_version: Engine weight version that sampled it.
    """

    sample: Sample
    reward: float
    terminated: bool
    truncated: bool
    info: dict[str, Any]
    final_state: Any
    policy_version: int


def grade_completion(env: Any, start_state: Any, text: str) -> tuple[float, bool, bool, dict, Any]:
    """Feed ``text``'s actions to ``env`` from ``start_state``; return the last transition.

    A completion that stops before any answer (EOS after some steps, or no action at all) is
    closed with an empty action, which the env grades as malformed: it earns the
    format-failure reward instead of silently scoring an intermediate 0.
    """
    env.set_state(start_state)
    terminated = truncated = False
    for action in split_actions(text, action_tags(env)):
        _, reward, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            break
    if not (terminated or truncated):
        _, reward, terminated, truncated, info = env.step("")
        info = {**info, "reason": "no_answer"}
    return float(reward), terminated, truncated, dict(info), env.get_state()


async def sample_and_grade(
    engine: PolicyEngine,
    env: Any,
    start_state: Any,
    prefix_ids: list[int],
    sampling: SamplingConfig,
    carry: str = "",
) -> list[GradedSample]:
    """Sample ``sampling.n`` completions of ``prefix_ids`` and grade each from ``start_state``.

    ``env`` must be an unwrapped langrl env (``get_state``/``set_state``); grading is
    synchronous and cheap, so one env instance serves all samples of a call. Without stop
    strings in ``sampling``, generation stops once the env's answer tag is closed.
    ``carry`` is text already in ``prefix_ids`` that the env has not been given (an MCTS
    node's ``carry``: a BPE token that ran past its step's stop string); each completion
    is graded as ``carry + sample.text``. A completion's own ``overhang`` is never graded:
    it lies past the stop string that ended it (by default the answer's closing tag, which
    ends the episode).
    """
    if not sampling.stop:
        sampling = replace(sampling, stop=action_tags(env).completion_stop)
    generation = await engine.generate(prefix_ids, sampling)
    graded = []
    for sample in generation.samples:
        reward, terminated, truncated, info, state = grade_completion(
            env, start_state, carry + sample.text
        )
        graded.append(
            GradedSample(
                sample, reward, terminated, truncated, info, state, generation.policy_version
            )
        )
    return graded
