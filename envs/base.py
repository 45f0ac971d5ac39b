"""Shared machinery of the text reasoning environments (Countdown, GSM8K).

An episode is one task. The observation is the transcript: the plain prompt followed by
every action so far, concatenated exactly as given, so that an agent holding the token ids
of prompt + steps stays consistent with the text. An action is ONE reasoning step
``<step>...</step>`` or the final ``<answer>...</answer>`` (tag names the env declares in
its ``ACTION_TAGS``); ``split_actions`` cuts a whole sampled completion into such actions,
so one grader (``env.step``) serves every agent.

This module holds what both tasks share: action tags and parsing, the immutable ``ReasoningState``
snapshot for tree search (``get_state``/``set_state``/``clone``), reward plumbing from a
named ``RewardConfig``, API-misuse errors, and the ``SyncStepLimit`` wrapper that lets the
registry's ``max_episode_steps`` grade the truncating step as "no answer".
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from fractions import Fraction
from os import PathLike
from typing import Any, ClassVar, Generic, TypeVar

import gymnasium as gym

from langrl.envs.text_space import UnicodeText

__all__ = [
    "CONTRACT_MEMBERS",
    "DEFAULT_ACTION_TAGS",
    "FORMAT_FAILURE_REASONS",
    "ActionTags",
    "Grade",
    "NO_ANSWER_REASONS",
    "ReasoningEnv",
    "ReasoningState",
    "RewardConfig",
    "SyncStepLimit",
    "action_tags",
    "contract_problems",
    "parse_action",
    "split_actions",
]

#: Reasons that earn ``RewardConfig.no_answer_reward``: the episode ended without an answer.
NO_ANSWER_REASONS = frozenset({"no_answer", "step_limit", "context_limit"})
#: Reasons that earn ``RewardConfig.format_failure_reward``: the action or answer was not
#: well formed, or (Countdown) used numbers illegally.
FORMAT_FAILURE_REASONS = frozenset(
    {
        "malformed_action",
        "action_too_long",
        "empty",
        "too_long",
        "invalid_character",
        "number_too_large",
        "too_many_numbers",
        "too_deep",
        "division_by_zero",
        "parse_error",
        "bad_numbers",
        "no_number",
        "ambiguous_answer",
    }
)


# --- actions ---

# A tag name is one XML-like word, so no tag can contain another ("<a>" is not in "</ab>").
_TAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class ActionTags:
    """The tag names of an env's actions: a step is ``<step>...</step>`` and the final
    answer ``<answer>...</answer>``, with ``step`` and ``answer`` the names below.

    An env declares its tags as the class attribute ``ReasoningEnv.ACTION_TAGS``; the env's
    parser (``parse_action``), the splitter of whole completions (``split_actions``) and
    the agents' stop strings (``action_stop`` for one tree-search step, ``completion_stop``
    for a whole completion) all take them from there, so an env can use e.g.
    ``ActionTags(step="think", answer="final")``. The policy must of course write them.
    """

    step: str = "step"
    """Name of the intermediate-step tag. Default ``"step"`` (``<step>...</step>``);
    a letter followed by letters, digits, ``_``, ``.`` or ``-``."""
    answer: str = "answer"
    """Name of the final-answer tag, which ends the episode. Default ``"answer"``
    (``<answer>...</answer>``); same rule as ``step`` and different from it."""

    def __post_init__(self) -> None:
        for name in ("step", "answer"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _TAG_NAME.fullmatch(value):
                raise ValueError(
                    f"ActionTags.{name} must be a tag name (a letter, then letters, digits, "
                    f"'_', '.' or '-'), got {value!r}"
                )
        if self.step == self.answer:
            raise ValueError(f"ActionTags.step and .answer must differ, both are {self.step!r}")

    @property
    def step_open(self) -> str:
        return f"<{self.step}>"

    @property
    def step_close(self) -> str:
        return f"</{self.step}>"

    @property
    def answer_open(self) -> str:
        return f"<{self.answer}>"

    @property
    def answer_close(self) -> str:
        return f"</{self.answer}>"

    @property
    def all(self) -> tuple[str, str, str, str]:
        """The four tags: step open/close, answer open/close."""
        return (self.step_open, self.step_close, self.answer_open, self.answer_close)

    @property
    def action_stop(self) -> tuple[str, str]:
        """Stop strings of ONE action (tree search expands a step at a time): either
        closing tag."""
        return (self.step_close, self.answer_close)

    @property
    def completion_stop(self) -> tuple[str]:
        """Stop strings of a whole completion: the episode ends once the answer is closed."""
        return (self.answer_close,)


#: langrl's own tags (Countdown, GSM8K and the tiny policy's tokenizer use them).
DEFAULT_ACTION_TAGS = ActionTags()


def action_tags(env: Any) -> ActionTags:
    """The action tags of ``env`` (a ``gym.make`` result or its ``.unwrapped``): its
    ``ACTION_TAGS``, or langrl's ``<step>``/``<answer>`` for an env that declares none."""
    inner = getattr(env, "unwrapped", env)
    tags = getattr(inner, "ACTION_TAGS", DEFAULT_ACTION_TAGS)
    if not isinstance(tags, ActionTags):
        raise TypeError(
            f"{type(inner).__name__}.ACTION_TAGS must be a langrl.envs.ActionTags, got {tags!r}"
        )
    return tags


def parse_action(action: str, tags: ActionTags = DEFAULT_ACTION_TAGS) -> tuple[str, str]:
    """Classify one action: ``(kind, content)`` with kind in ``step``, ``answer``,
    ``empty`` (only whitespace) or ``malformed``; ``tags`` names the step and answer tags
    (``env.ACTION_TAGS``).

    Surrounding whitespace is ignored. A step/answer is exactly one opening tag, content
    without any of the four tags, and the matching closing tag; anything else (no closing
    tag because generation was cut off, two steps in one action, text outside the tags)
    is malformed. Cost is O(len(action)).
    """
    text = action.strip()
    if not text:
        return "empty", ""
    for kind, open_tag, close_tag in (
        ("step", tags.step_open, tags.step_close),
        ("answer", tags.answer_open, tags.answer_close),
    ):
        if (
            text.startswith(open_tag)
            and text.endswith(close_tag)
            and len(text) >= len(open_tag) + len(close_tag)
        ):
            content = text[len(open_tag) : len(text) - len(close_tag)]
            if any(tag in content for tag in tags.all):
                return "malformed", text
            return kind, content
    return "malformed", text


def split_actions(text: str, tags: ActionTags = DEFAULT_ACTION_TAGS) -> list[str]:
    """Split a whole completion into env actions, losslessly; ``tags`` names the step and
    answer tags (``env.ACTION_TAGS``; ``langrl.envs.action_tags(env)`` reads them).

    Each action runs up to and including the next ``</step>`` or ``</answer>``; the text
    between two actions (e.g. a newline) stays at the front of the next one, where
    ``step`` tolerates whitespace. Text after ``</answer>`` is dropped (the episode ends
    there); any other trailing text (a step cut off by a token limit, or trailing
    whitespace) becomes a final action that the env grades as malformed / no answer. So
    ``"".join(split_actions(t))`` is ``t`` up to the end of its first ``</answer>``.

    >>> split_actions("<step>7 * 4 = 28</step>\\n<answer>7 * 4 - 4</answer> bye")
    ['<step>7 * 4 = 28</step>', '\\n<answer>7 * 4 - 4</answer>']
    >>> split_actions("<step>1 + 2 = 3</step><step>3 *")
    ['<step>1 + 2 = 3</step>', '<step>3 *']
    >>> split_actions("<think>2 + 3</think><final>5</final>", ActionTags("think", "final"))
    ['<think>2 + 3</think>', '<final>5</final>']
    """
    if not isinstance(text, str):
        raise TypeError(f"split_actions expects a str, got {type(text).__name__}")
    if not isinstance(tags, ActionTags):
        raise TypeError(f"split_actions: tags must be an ActionTags, got {tags!r}")
    actions: list[str] = []
    pos = 0
    # `re` caches the compiled pattern, so building it per call costs a dict lookup.
    closing = re.compile(re.escape(tags.step_close) + "|" + re.escape(tags.answer_close))
    for match in closing.finditer(text):
        actions.append(text[pos : match.end()])
        pos = match.end()
        if match.group() == tags.answer_close:
            return actions
    if pos < len(text):
        actions.append(text[pos:])
    return actions


# --- rewards and grades ---


@dataclass(frozen=True)
class RewardConfig:
    """Named reward values of a reasoning env (documented in each env's docstring).

    Presets: each env class has ``REWARD_PRESETS = {"dense": ..., "sparse": ...}``; pass
    ``reward="dense"`` (training), ``reward="sparse"`` (evaluation, 0/1) or an instance.
    """

    correct_reward: float = 1.0
    """Final answer equal to the target/gold."""
    wrong_reward: float = 0.0
    """Well-formed, legal answer with the wrong value (at or beyond distance 1 when
    ``distance_shaping`` is on)."""
    distance_shaping: bool = False
    """If True, a wrong answer with relative error ``d = |t - p| / |t|`` earns
    ``correct_reward - (correct_reward - wrong_reward) * min(d, 1)``; with 1 and -1 this is
    the reference method's Countdown reward ``1 - 2 * min(|t - p| / t, 1)``."""
    format_failure_reward: float = 0.0
    """Malformed action (no closing tag, text outside tags), unparsable answer, or a
    Countdown answer that uses numbers illegally."""
    no_answer_reward: float = 0.0
    """Episode ended without an answer: empty action, step limit, context limit."""
    step_reward: float = 0.0
    """Every intermediate ``<step>`` (including the one that hits the step limit, which
    gets ``no_answer_reward`` instead)."""
    invalid_step_reward: float = 0.0
    """Optional process signal added to a step's reward when its arithmetic check fails
    (``info["step_check"]`` not in ``ok``/``unchecked``). 0 leaves the task reward alone."""

    def __post_init__(self) -> None:
        for name in (
            "correct_reward",
            "wrong_reward",
            "format_failure_reward",
            "no_answer_reward",
            "step_reward",
            "invalid_step_reward",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"RewardConfig.{name} must be a number, got {value!r}")
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError(f"RewardConfig.{name} must be finite, got {value!r}")
        if not isinstance(self.distance_shaping, bool):
            raise ValueError(
                f"RewardConfig.distance_shaping must be a bool, got {self.distance_shaping!r}"
            )


@dataclass(frozen=True)
class Grade:
    """Verdict on one final answer. ``reason`` is ``correct``, ``wrong_value``, one of
    ``FORMAT_FAILURE_REASONS`` or one of ``NO_ANSWER_REASONS``."""

    reason: str
    value: int | Fraction | None = None
    """The parsed value of the answer, when it could be parsed."""
    detail: str = ""
    distance: Fraction | None = None
    """Relative error ``|target - value| / |target|`` for wrong values (Countdown)."""

    @property
    def correct(self) -> bool:
        return self.reason == "correct"


#: ``info["step_check"]`` verdicts of a step that passed its check, or that the env does not
#: check; any other verdict is a failed check (``step_check_failed``).
PASSING_STEP_CHECKS = frozenset({"ok", "unchecked"})


def step_check_failed(info: Mapping[str, Any]) -> bool:
    """Whether ``env.step``'s ``info`` reports a step whose check failed: a ``step_check``
    verdict outside ``PASSING_STEP_CHECKS``. No ``step_check`` (an answer, or an env without
    step checks) is not a failure. The env's ``invalid_step_reward`` and the tree search's
    pruning both follow this one rule."""
    return info.get("step_check", "unchecked") not in PASSING_STEP_CHECKS


def reward_for(grade: Grade, config: RewardConfig) -> float:
    """Map a grade to a reward under ``config``. Pure, so agents can re-score offline."""
    reason = grade.reason
    if reason == "correct":
        return float(config.correct_reward)
    if reason == "wrong_value":
        if config.distance_shaping and grade.distance is not None:
            d = min(grade.distance, Fraction(1))
            c, w = Fraction(config.correct_reward), Fraction(config.wrong_reward)
            return float(c - (c - w) * d)
        return float(config.wrong_reward)
    if reason in NO_ANSWER_REASONS:
        return float(config.no_answer_reward)
    if reason in FORMAT_FAILURE_REASONS:
        return float(config.format_failure_reward)
    raise ValueError(f"unknown grade reason {reason!r}")


# --- state snapshot ---

TaskT = TypeVar("TaskT")


@dataclass(frozen=True, slots=True)
class ReasoningState(Generic[TaskT]):
    """Immutable snapshot of an episode, for tree search.

    Contract: ``env.set_state(env.get_state())`` is a no-op, and after ``b.set_state(s)``
    with ``s = a.get_state()``, stepping ``b`` with the same actions gives the same
    observations, rewards, flags and infos as stepping ``a`` (for envs built with the same
    arguments). All fields are immutable (``str``, tuples, frozen task), so a snapshot is
    O(1) to take, can be shared between tree nodes, and never changes when the env moves
    on. It does not include the env's RNG (which only ``reset`` uses), its configuration,
    or wrapper state: branch with the unwrapped env (``env.unwrapped``) or ``clone()``.
    """

    task: TaskT
    index: int | None
    """Position of the task in the env's data set, or None if it came from options."""
    prompt: str
    transcript: str
    """``prompt + "".join(actions)``, the current observation."""
    actions: tuple[str, ...]
    num_steps: int
    terminated: bool
    truncated: bool
    progress: tuple[Any, ...] = field(default=())
    """Env-specific step-check state (Countdown: numbers available to the next step)."""

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated


# --- the environment base ---


class ReasoningEnv(gym.Env[str, str], Generic[TaskT]):
    """Base class of text reasoning environments: the env contract langrl's agents rely on.

    See ``CountdownEnv`` and ``GSM8KEnv`` for full specifications, and
    ``tests/envs/sum_env.py`` for a small env of one's own.

    What a subclass supplies (the task):
        ``TASK_TYPE``: the task dataclass (frozen, with ``to_dict()``).
        ``REWARD_PRESETS``: ``{"dense": RewardConfig(...), "sparse": RewardConfig(...)}``;
            agents train on ``dense`` and evaluation counts ``sparse`` (0/1).
        ``load_tasks(split, data_path)``: the tasks of ``train`` / ``test``.
        ``format_prompt(task)`` / ``format_messages(task)``: plain and chat prompts.
        ``grade_answer(task, content) -> Grade``: the verdict on an ``<answer>``.
        Optionally ``ACTION_TAGS``: the tag names of its actions, an ``ActionTags``
        (default ``<step>``/``<answer>``; e.g. ``ActionTags(step="think", answer="final")``).
        The env's parser, ``split_actions`` and the agents' stop strings all use them.
        Optionally ``_check_step`` (a per-step verdict), ``_initial_progress``,
        ``TASK_OPTION_KEYS`` + ``_task_from_options`` (tasks given by content).

    What agents, evaluation and the trainer use (``CONTRACT_MEMBERS``, checked by
    ``langrl.training.config.check_env`` before any engine starts):
        ``__init__(split=..., reward=...)``; ``num_tasks()`` and
        ``reset(options={"index": i})``, whose info holds ``prompt`` and ``messages``;
        ``step(action)`` with ``reason`` / ``is_correct`` in the info that ends an episode
        (``step("")`` closes an unfinished one as ``no_answer``); ``get_state()`` /
        ``set_state(state)`` (snapshots: every agent grades completions from one) and
        ``task_info()`` (tree search); ``ACTION_TAGS`` (read by ``action_tags(env)``:
        agents split completions into actions and stop generation on its closing tags).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi", "human"], "render_fps": 4}
    REWARD_PRESETS: ClassVar[dict[str, RewardConfig]] = {}
    TASK_OPTION_KEYS: ClassVar[frozenset[str]] = frozenset()

    #: The task dataclass a subclass serves; ``tasks=`` must hold instances of it.
    TASK_TYPE: ClassVar[type] = object
    #: Tag names of a step and of the final answer (see ``ActionTags``).
    ACTION_TAGS: ClassVar[ActionTags] = DEFAULT_ACTION_TAGS

    def __init__(
        self,
        *,
        split: str = "train",
        data_path: str | PathLike | None = None,
        tasks: Sequence[TaskT] | None = None,
        reward: str | RewardConfig = "dense",
        max_steps: int | None = None,
        max_action_chars: int = 2048,
        max_observation_chars: int = 16384,
        render_mode: str | None = None,
    ) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        action_tags(self)  # a bad ACTION_TAGS fails here, not at the first step
        if tasks is not None:
            tasks = tuple(tasks)
            if not tasks or not all(isinstance(t, self.TASK_TYPE) for t in tasks):
                raise ValueError(f"tasks must be a non-empty sequence of {self.TASK_TYPE.__name__}")
        self.split = split
        self.data_path = data_path
        self._tasks: tuple[TaskT, ...] | None = tasks
        if isinstance(reward, str):
            if reward not in self.REWARD_PRESETS:
                raise ValueError(
                    f"reward must be one of {sorted(self.REWARD_PRESETS)} or a RewardConfig, "
                    f"got {reward!r}"
                )
            reward = self.REWARD_PRESETS[reward]
        elif isinstance(reward, Mapping):
            # Named fields, as a YAML preset or `--env_kwargs.reward '{...}'` gives them.
            known = {f.name for f in fields(RewardConfig)}
            unknown = sorted(set(reward) - known)
            if unknown:
                raise ValueError(
                    f"reward: unknown RewardConfig fields {unknown}; known: {sorted(known)}"
                )
            reward = RewardConfig(**reward)
        elif not isinstance(reward, RewardConfig):
            raise ValueError(
                f"reward must be a preset name, a RewardConfig or a mapping of its fields, got {reward!r}"
            )
        if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
            raise ValueError(f"max_steps must be a positive int or None, got {max_steps!r}")
        for name, value in (
            ("max_action_chars", max_action_chars),
            ("max_observation_chars", max_observation_chars),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be None or one of {self.metadata['render_modes']}, "
                f"got {render_mode!r}"
            )
        self.reward_config: RewardConfig = reward
        self.max_steps: int | None = max_steps
        self.max_action_chars = max_action_chars
        self.max_observation_chars = max_observation_chars
        self.render_mode = render_mode
        self._state: ReasoningState[TaskT] | None = None

        self.action_space = UnicodeText(max_action_chars, min_length=0)
        self.observation_space = UnicodeText(max_observation_chars, min_length=0)

    # --- hooks for subclasses ---

    def _dataset(self) -> Sequence[TaskT]:
        """The task list: ``tasks=`` if given, else the split's data file, loaded once."""
        if self._tasks is None:
            self._tasks = self.load_tasks(self.split, self.data_path)
        return self._tasks

    def num_tasks(self) -> int:
        """How many tasks the split holds: ``reset(options={"index": i})`` takes
        ``0 <= i < num_tasks()``. Loads the split on first use (small, local files)."""
        return len(self._dataset())

    @staticmethod
    def load_tasks(split: str, data_path: str | PathLike | None) -> tuple[TaskT, ...]:
        """Read the tasks of ``split`` (from ``data_path`` or the default data folder)."""
        raise NotImplementedError

    def _task_from_options(self, options: dict[str, Any]) -> TaskT:
        raise NotImplementedError

    def format_prompt(self, task: TaskT) -> str:
        """The plain-text prompt of ``task`` (the first observation)."""
        raise NotImplementedError

    def format_messages(self, task: TaskT) -> list[dict[str, str]]:
        """The chat form of ``task``'s prompt (system + user messages)."""
        raise NotImplementedError

    def grade_answer(self, task: TaskT, content: str) -> Grade:
        """Grade the content of an ``<answer>`` tag (untrusted text)."""
        raise NotImplementedError

    def _initial_progress(self, task: TaskT) -> tuple[Any, ...]:
        return ()

    def _check_step(
        self, task: TaskT, content: str, progress: tuple[Any, ...]
    ) -> tuple[str, str, tuple[Any, ...]]:
        """Verify a step's content: ``(verdict, detail, new_progress)``."""
        return "unchecked", "", progress

    # --- Gymnasium API ---

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        state = self._state
        if state is None:
            raise RuntimeError(f"{type(self).__name__}: call reset() before step()")
        if state.done:
            raise RuntimeError(
                f"{type(self).__name__}: the episode has ended "
                f"({'terminated' if state.terminated else 'truncated'}); call reset() to "
                "start a new one, or set_state() to go back to an earlier snapshot"
            )
        tags = self.ACTION_TAGS
        if not isinstance(action, str):
            raise TypeError(
                f"{type(self).__name__}.step() takes one action as a str "
                f"('{tags.step_open}...{tags.step_close}' or "
                f"'{tags.answer_open}...{tags.answer_close}'), got "
                f"{type(action).__name__}; decode token ids to text first, and use "
                "langrl.envs.split_actions(text, env.ACTION_TAGS) to cut a whole completion "
                "into actions"
            )
        cfg = self.reward_config
        num_steps = state.num_steps + 1
        info: dict[str, Any] = {"num_steps": num_steps}

        # An oversized action is not appended: the observation must stay in its space.
        if len(action) > self.max_action_chars:
            return self._finish(
                state, state.transcript, num_steps, info,
                Grade("action_too_long", detail=f"{len(action)} > {self.max_action_chars} chars"),
                terminated=True,
            )  # fmt: skip
        if len(state.transcript) + len(action) > self.max_observation_chars:
            return self._finish(
                state, state.transcript, num_steps, info,
                Grade("context_limit", detail=f"transcript would exceed {self.max_observation_chars} chars"),
                terminated=False,
            )  # fmt: skip

        transcript = state.transcript + action
        kind, content = parse_action(action, tags)
        if kind == "step":
            verdict, detail, progress = self._check_step(state.task, content, state.progress)
            info["step_check"] = verdict
            info["step_detail"] = detail
            reward = cfg.step_reward
            if step_check_failed(info):
                reward += cfg.invalid_step_reward
            if self.max_steps is not None and num_steps >= self.max_steps:
                # The truncating step is graded as "no answer" (the reference gives such
                # an episode the format-failure reward), on top of any process signal.
                return self._finish(
                    state, transcript, num_steps, info,
                    Grade("step_limit", detail=f"{num_steps} steps without an answer"),
                    terminated=False, action=action, progress=progress,
                    extra_reward=reward - cfg.step_reward,
                )  # fmt: skip
            self._state = replace(
                state,
                transcript=transcript,
                actions=state.actions + (action,),
                num_steps=num_steps,
                progress=progress,
            )
            info["reason"] = "step"
            if self.render_mode == "human":
                self.render()
            return transcript, float(reward), False, False, info
        if kind == "answer":
            grade = self.grade_answer(state.task, content)
            info["answer"] = content
        elif kind == "empty":
            grade = Grade("no_answer", detail="empty action")
        else:
            grade = Grade("malformed_action", detail=_describe_malformed(content, tags))
        return self._finish(
            state, transcript, num_steps, info, grade, terminated=True, action=action
        )

    def _finish(
        self,
        state: ReasoningState[TaskT],
        transcript: str,
        num_steps: int,
        info: dict[str, Any],
        grade: Grade,
        *,
        terminated: bool,
        action: str | None = None,
        progress: tuple[Any, ...] | None = None,
        extra_reward: float = 0.0,
    ) -> tuple[str, float, bool, bool, dict[str, Any]]:
        self._state = replace(
            state,
            transcript=transcript,
            actions=state.actions + ((action,) if action is not None else ()),
            num_steps=num_steps,
            terminated=terminated,
            truncated=not terminated,
            progress=state.progress if progress is None else progress,
        )
        reward = reward_for(grade, self.reward_config) + extra_reward
        info.update(
            reason=grade.reason,
            detail=grade.detail,
            value=grade.value,
            is_correct=grade.correct,
        )
        if self.render_mode == "human":
            self.render()
        return transcript, float(reward), terminated, not terminated, info

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        options = dict(options or {})
        index: int | None = None
        if "index" in options:
            extra = set(options) - {"index"}
            if extra:
                raise ValueError(f"options 'index' cannot be combined with {sorted(extra)}")
            data = self._dataset()
            index = options["index"]
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(data):
                raise ValueError(
                    f"options['index'] must be an int in [0, {len(data)}), got {index!r}"
                )
            task = data[index]
        elif options:
            unknown = set(options) - self.TASK_OPTION_KEYS
            if unknown:
                raise ValueError(
                    f"unknown reset option(s) {sorted(unknown)}; {type(self).__name__} accepts "
                    f"{{'index': i}} or {sorted(self.TASK_OPTION_KEYS)}"
                )
            task = self._task_from_options(options)
        else:
            data = self._dataset()
            index = int(self.np_random.integers(len(data)))
            task = data[index]
        prompt = self.format_prompt(task)
        if len(prompt) > self.max_observation_chars:
            raise ValueError(
                f"the prompt has {len(prompt)} characters, more than max_observation_chars="
                f"{self.max_observation_chars}; construct the env with a larger value"
            )
        self._state = ReasoningState(
            task=task,
            index=index,
            prompt=prompt,
            transcript=prompt,
            actions=(),
            num_steps=0,
            terminated=False,
            truncated=False,
            progress=self._initial_progress(task),
        )
        if self.render_mode == "human":
            self.render()
        return prompt, self.task_info()

    def render(self) -> str | None:
        if self.render_mode is None:
            gym.logger.warn(
                "render() called without a render_mode; construct the env with "
                "render_mode='ansi' or 'human'"
            )
            return None
        text = self._state.transcript if self._state is not None else ""
        if self.render_mode == "human":
            print(text)
            return None
        return text

    # --- state, for tree search ---

    def get_state(self) -> ReasoningState[TaskT]:
        """O(1) immutable snapshot of the episode (see ``ReasoningState`` for the contract)."""
        if self._state is None:
            raise RuntimeError(f"{type(self).__name__}: call reset() before get_state()")
        return self._state

    def set_state(self, state: ReasoningState[TaskT]) -> None:
        """Restore a snapshot taken by ``get_state`` on an env of the same type. Also sets
        the transcript (the next observation continues from ``state.transcript``)."""
        if not isinstance(state, ReasoningState):
            raise TypeError(f"set_state expects a ReasoningState, got {type(state).__name__}")
        expected = self.TASK_TYPE
        if not isinstance(state.task, expected):
            raise TypeError(
                f"{type(self).__name__}.set_state got a state for a "
                f"{type(state.task).__name__}, expected {expected.__name__}"
            )
        self._state = state

    def clone(self) -> ReasoningEnv[TaskT]:
        """An independent env with the same configuration and state (and a copy of the
        RNG). Data sets are shared, not copied (they are immutable)."""
        new = copy.copy(self)
        new._np_random = copy.deepcopy(self._np_random)
        new.action_space = copy.deepcopy(self.action_space)
        new.observation_space = copy.deepcopy(self.observation_space)
        return new

    def task_info(self) -> dict[str, Any]:
        """The ``info`` that ``reset`` returns for the current task: ``task`` (dict),
        ``prompt`` (plain text), ``messages`` (chat form) and ``index``."""
        state = self.get_state()
        return {
            "task": state.task.to_dict(),  # type: ignore[attr-defined]
            "prompt": state.prompt,
            "messages": self.format_messages(state.task),
            "index": state.index,
        }


# --- the contract agents rely on ---

#: What langrl's agents, evaluation and trainer call on ``env.unwrapped``, by use. Every
#: ``ReasoningEnv`` has all of it; an env of your own needs only these members (see
#: ``contract_problems``), plus ``reset`` info with ``prompt`` (str) and ``messages``
#: (chat list), ``info["reason"]``/``info["is_correct"]`` when an episode ends, and the
#: ``split`` (``train``/``test``) and ``reward`` (``dense``/``sparse``) keyword arguments.
#: Its ``ACTION_TAGS`` (an ``ActionTags``) is optional: without it, ``<step>``/``<answer>``.
CONTRACT_MEMBERS: dict[str, tuple[str, ...]] = {
    # every agent and evaluation: tasks by index, grading a completion from a snapshot
    "rollouts": ("reset", "step", "num_tasks", "get_state", "set_state"),
    # tree search (MCTS): the root's reset info without a second reset
    "search": ("task_info",),
}


def contract_problems(env: Any, uses: Sequence[str] = ("rollouts",)) -> list[str]:
    """What ``env`` (a ``gym.make`` result or its ``.unwrapped``) lacks for ``uses`` (keys of
    ``CONTRACT_MEMBERS``), as short phrases; empty when it fits. Resets the env once, to
    task 0, to check the reset info."""
    inner = getattr(env, "unwrapped", env)
    missing = [
        name
        for use in uses
        for name in CONTRACT_MEMBERS[use]
        if not callable(getattr(inner, name, None))
    ]
    if missing:
        return [f"no {', '.join(missing)}"]
    try:
        action_tags(inner)
    except TypeError as err:
        return [str(err)]
    problems = []
    try:
        size = inner.num_tasks()
    except Exception as err:  # noqa: BLE001  (any failure is reported, not raised)
        return [f"num_tasks() failed: {type(err).__name__}: {' '.join(str(err).split())}"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        return [f"num_tasks() returned {size!r}, not a positive int"]
    try:
        _, info = inner.reset(options={"index": 0})
    except Exception as err:  # noqa: BLE001
        return [f"reset(options={{'index': 0}}) failed: {type(err).__name__}: {err}"]
    if not isinstance(info, Mapping) or not isinstance(info.get("prompt"), str):
        problems.append("no str 'prompt' in reset info")
    if not isinstance(info, Mapping) or not isinstance(info.get("messages"), list):
        problems.append("no 'messages' list in reset info")
    return problems


def _describe_malformed(text: str, tags: ActionTags) -> str:
    head = text[:40]
    if any(head.startswith(t) for t in (tags.step_open, tags.answer_open)):
        return "no matching closing tag, or more than one tag in one action"
    return (
        f"expected {tags.step_open}...{tags.step_close} or "
        f"{tags.answer_open}...{tags.answer_close}, got {head!r}..."
    )


class SyncStepLimit(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Copies the ``TimeLimit`` step limit into the reasoning env underneath.

    ``gym.make`` puts ``TimeLimit(max_episode_steps)`` outside the env, where it can only
    flag truncation; the registry adds this wrapper (outside ``TimeLimit``) so that the env
    itself knows the limit: the truncating step is graded as "no answer" (reason
    ``step_limit``), and ``get_state``/``set_state`` on the unwrapped env (tree search)
    respect the same limit. Overrides such as ``gym.make(id, max_episode_steps=4)`` are
    honoured; an explicit smaller ``max_steps`` kwarg wins.
    """

    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)
        limit = env.spec.max_episode_steps if env.spec is not None else None
        inner = env.unwrapped
        if limit is not None and isinstance(inner, ReasoningEnv):
            inner.max_steps = limit if inner.max_steps is None else min(inner.max_steps, limit)
