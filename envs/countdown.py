"""Countdown: combine the given numbers with + - * / to reach the target.

The task of the tree-search-distillation reference method (and of TinyZero): four numbers
in [1, 13] and a target; the answer is one arithmetic expression in the original numbers,
each used at most once. This module holds the prompt template, the exact grader, the
per-step checker, a memoized solver (``solve``, ``solution_steps``), a generator of
solvable tasks (``CountdownGeneratorConfig``/``generate_tasks``) and ``CountdownEnv``;
registration lives in ``langrl/envs/__init__.py``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from os import PathLike
from typing import Any

from langrl.envs.base import Grade, ReasoningEnv, RewardConfig
from langrl.envs.datasets import load_jsonl_tasks, resolve_data_file
from langrl.envs.safe_arithmetic import (
    ArithmeticLimits,
    BinOp,
    Neg,
    Node,
    Num,
    Number,
    SafeArithmeticError,
    format_number,
    parse_expression,
)

__all__ = [
    "ANSWER_LIMITS",
    "CountdownEnv",
    "CountdownGeneratorConfig",
    "CountdownTask",
    "SYSTEM_PROMPT",
    "check_step",
    "format_prompt",
    "generate_task",
    "generate_tasks",
    "grade_answer",
    "load_countdown",
    "solution_steps",
    "solve",
]

# --- prompt ---

SYSTEM_PROMPT = (
    "You are given a list of numbers and a target. Using + - * / and parentheses, write an "
    "expression that equals the target, using each number at most once. Show your work "
    "one step at a time: each step combines two available numbers with one operation and "
    "states the result, inside <step></step> tags, one step per tag. Then write the final "
    "expression, using only the original numbers, inside <answer></answer> tags.\n"
    "Example:\n"
    "Numbers: 7 4 5 1\n"
    "Target: 24\n"
    "<step>7 * 4 = 28</step><step>28 - 5 = 23</step><step>23 + 1 = 24</step>"
    "<answer>(7 * 4) - 5 + 1</answer>"
)
SYSTEM_PROMPT_ALL_NUMBERS = SYSTEM_PROMPT.replace("at most once", "exactly once")

#: Bounds on an answer expression: far above what 4-13 numbers need, far below costly.
ANSWER_LIMITS = ArithmeticLimits(max_chars=256, max_depth=24, max_digits=12, max_literals=32)
#: Bounds on each side of a step ``a op b = c``.
STEP_LIMITS = ArithmeticLimits(max_chars=128, max_depth=8, max_digits=40, max_literals=8)


@dataclass(frozen=True)
class CountdownTask:
    """One Countdown problem: positive integers ``numbers`` and a positive ``target``."""

    numbers: tuple[int, ...]
    target: int

    def __post_init__(self) -> None:
        if not isinstance(self.numbers, tuple):
            object.__setattr__(self, "numbers", tuple(self.numbers))
        if not 1 <= len(self.numbers) <= 12:
            raise ValueError(f"Countdown needs 1 to 12 numbers, got {list(self.numbers)}")
        for n in (*self.numbers, self.target):
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ValueError(
                    f"Countdown numbers and target must be non-negative ints, got "
                    f"numbers={list(self.numbers)} target={self.target!r}"
                )
        if self.target < 1:
            # The dense reward divides by the target.
            raise ValueError(f"Countdown target must be >= 1, got {self.target}")

    def to_dict(self) -> dict[str, Any]:
        return {"numbers": list(self.numbers), "target": self.target}


def format_prompt(task: CountdownTask) -> str:
    """``"Numbers: 3 5 7 2\\nTarget: 24\\n"`` (a format the tokenizer and model rely on)."""
    return f"Numbers: {' '.join(map(str, task.numbers))}\nTarget: {task.target}\n"


def load_countdown(
    split: str = "train", data_path: str | PathLike | None = None
) -> tuple[CountdownTask, ...]:
    """Countdown tasks from ``{"input": [...], "target": t}`` JSONL (see ``datasets``)."""
    return load_jsonl_tasks(resolve_data_file("countdown", split, data_path), _parse_row)


def _parse_row(row: dict[str, Any], where: str) -> CountdownTask:
    numbers = row.get("input", row.get("numbers"))
    if not isinstance(numbers, list) or "target" not in row:
        raise ValueError(f"{where}: expected {{'input': [ints], 'target': int}}, got {row!r}")
    try:
        return CountdownTask(tuple(numbers), row["target"])
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc


# --- grading ---


def grade_answer(content: str, task: CountdownTask, *, use_all_numbers: bool = False) -> Grade:
    """Grade untrusted answer text exactly: parse, check numbers, compare to the target.

    Reasons: ``correct``, ``wrong_value`` (legal expression, other value; ``distance`` set),
    ``bad_numbers`` (a number not given, or used more often than given, or, with
    ``use_all_numbers``, not all used), and the parser's ``SafeArithmeticError`` reasons.
    """
    try:
        parsed = parse_expression(content, ANSWER_LIMITS)
    except SafeArithmeticError as exc:
        return Grade(exc.reason, detail=exc.message)
    # Multiset check by removal: at most a dozen numbers, faster than Counter arithmetic.
    available = list(task.numbers)
    extra = []
    for literal in parsed.literals:
        try:
            available.remove(literal)
        except ValueError:
            extra.append(literal)
    if extra:
        what = ", ".join(format_number(n) for n in sorted(extra))
        return Grade("bad_numbers", parsed.value, f"uses {what} beyond the given numbers")
    if use_all_numbers and available:
        missing = ", ".join(map(str, sorted(available)))
        return Grade("bad_numbers", parsed.value, f"does not use {missing}")
    if parsed.value == task.target:
        return Grade("correct", parsed.value)
    distance = abs(Fraction(task.target) - parsed.value) / task.target
    return Grade("wrong_value", parsed.value, f"= {format_number(parsed.value)}", distance)


def _number_term(node: Node) -> bool:
    """A single (possibly signed or fractional) number: ``7``, ``(-2)``, ``(7/2)``."""
    if isinstance(node, Num):
        return True
    if isinstance(node, Neg):
        return _number_term(node.operand)
    return (
        isinstance(node, BinOp)
        and node.op == "/"
        and node.parenthesized
        and isinstance(node.left, (Num, Neg))
        and _number_term(node.left)
        and isinstance(node.right, Num)
    )


def check_step(content: str, pool: tuple[Number, ...]) -> tuple[str, str, tuple[Number, ...]]:
    """Verify a step ``a op b = c`` exactly against the numbers available (``pool``).

    Returns ``(verdict, detail, new_pool)``; verdicts: ``ok`` (a and b available, c correct;
    new_pool has a and b replaced by c), ``parse_error``, ``not_binary`` (left side is not
    one operation on two numbers), ``unavailable_number`` and ``arith_error`` (pool
    unchanged for all failures).
    """
    if content.count("=") != 1:
        return "parse_error", "expected exactly one '=' (a op b = c)", pool
    lhs_text, rhs_text = content.split("=")
    try:
        lhs = parse_expression(lhs_text, STEP_LIMITS)
        rhs = parse_expression(rhs_text, STEP_LIMITS)
    except SafeArithmeticError as exc:
        return "parse_error", exc.message, pool
    root = lhs.root
    if not (isinstance(root, BinOp) and _number_term(root.left) and _number_term(root.right)):
        return "not_binary", "the left side must be one operation on two numbers", pool
    remaining = list(pool)
    for operand in (root.left.value, root.right.value):
        try:
            remaining.remove(operand)
        except ValueError:
            return "unavailable_number", f"{format_number(operand)} is not available", pool
    if root.value != rhs.value:
        return "arith_error", f"the left side equals {format_number(root.value)}", pool
    return "ok", "", (*remaining, root.value)


# --- solver ---

_OPS = ("+", "-", "*", "/")


def _combine(a: Number, b: Number, integer_only: bool) -> list[tuple[Number, str, Number, Number]]:
    """Candidate steps ``(x, op, y, result)`` on the pair {a, b}, in a fixed order."""
    steps: list[tuple[Number, str, Number, Number]] = []
    hi, lo = (a, b) if a >= b else (b, a)
    steps.append((hi, "+", lo, hi + lo))
    steps.append((hi, "*", lo, hi * lo))
    if hi != lo or not integer_only:
        steps.append((hi, "-", lo, hi - lo))
    if not integer_only:
        steps.append((lo, "-", hi, lo - hi))
    for x, y in ((hi, lo), (lo, hi)):
        if y == 0:
            continue
        if isinstance(x, int) and isinstance(y, int) and x % y == 0:
            steps.append((x, "/", y, x // y))
        elif not integer_only:
            q = Fraction(x) / Fraction(y)
            steps.append((x, "/", y, q.numerator if q.denominator == 1 else q))
        if hi == lo:
            break
    if integer_only:
        # Classic Countdown: intermediate results are positive integers; a step that just
        # reproduces an operand (x * 1, x / 1) never helps.
        steps = [s for s in steps if s[3] > 0 and s[3] not in (s[0], s[2])]
    return steps


@lru_cache(maxsize=1 << 18)
def _search(
    values: tuple[Number, ...], target: int, integer_only: bool, use_all: bool
) -> tuple[tuple[Number, str, Number, Number], ...] | None:
    """Shortest-first DFS over pairs; ``values`` sorted so equal multisets share a cache
    entry. Returns the steps of a solution or None."""
    if target in values and (not use_all or len(values) == 1):
        return ()
    if len(values) == 1:
        return None
    seen: set[tuple[Number, Number]] = set()
    n = len(values)
    for i in range(n):
        for j in range(i + 1, n):
            pair = (values[i], values[j])
            if pair in seen:
                continue
            seen.add(pair)
            rest = values[:i] + values[i + 1 : j] + values[j + 1 :]
            for step in _combine(values[i], values[j], integer_only):
                found = _search(tuple(sorted((*rest, step[3]))), target, integer_only, use_all)
                if found is not None:
                    return (step, *found)
    return None


def _fmt_operand(value: Number) -> str:
    return str(value) if isinstance(value, int) and value >= 0 else f"({format_number(value)})"


_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


@lru_cache(maxsize=1 << 16)
def _solution(
    numbers: tuple[int, ...], target: int, use_all: bool
) -> tuple[tuple[str, ...], str] | None:
    key = tuple(sorted(numbers))
    steps = _search(key, target, True, use_all)
    if steps is None:  # fall back to negative and fractional intermediates
        steps = _search(key, target, False, use_all)
    if steps is None:
        return None
    # Replay the steps on expressions in the original numbers: (value, text, op or None).
    exprs: list[tuple[Number, str, str | None]] = [(n, str(n), None) for n in numbers]
    step_texts = []
    for x, op, y, result in steps:
        left = _pop_value(exprs, x)
        right = _pop_value(exprs, y)
        left_text = left[1]
        if left[2] is not None and _PRECEDENCE[left[2]] != _PRECEDENCE[op]:
            left_text = f"({left_text})"  # keep "(7 * 4) - 5": parens around mixed levels
        right_text = right[1] if right[2] is None else f"({right[1]})"
        exprs.append((result, f"{left_text} {op} {right_text}", op))
        step_texts.append(
            f"<step>{_fmt_operand(x)} {op} {_fmt_operand(y)} = {format_number(result)}</step>"
        )
    answer = next(e for e in exprs if e[0] == target)[1]
    return tuple(step_texts), answer


def _pop_value(
    exprs: list[tuple[Number, str, str | None]], value: Number
) -> tuple[Number, str, str | None]:
    for k, entry in enumerate(exprs):
        if entry[0] == value:
            return exprs.pop(k)
    raise RuntimeError(f"solver replay lost value {value}")  # unreachable by construction


def solve(numbers: Sequence[int], target: int, *, use_all_numbers: bool = False) -> str | None:
    """An expression in the original ``numbers`` (each at most once, or exactly once with
    ``use_all_numbers``) equal to ``target``, or None. Prefers positive-integer intermediate
    results; deterministic and memoized.

    >>> solve([7, 4, 5, 1], 24)
    '(5 + 1) * 4'
    """
    found = _solution(tuple(numbers), int(target), use_all_numbers)
    return None if found is None else found[1]


def solution_steps(
    numbers: Sequence[int], target: int, *, use_all_numbers: bool = False
) -> list[str] | None:
    """Env actions of a step-by-step solution, e.g. ``["<step>7 * 4 = 28</step>", ...,
    "<answer>7 * 4 - 5 + 1</answer>"]``, or None if unsolvable. Fed to ``CountdownEnv.step``
    one by one, every step checks ``ok`` and the answer scores ``correct_reward``."""
    found = _solution(tuple(numbers), int(target), use_all_numbers)
    if found is None:
        return None
    steps, answer = found
    return [*steps, f"<answer>{answer}</answer>"]


# --- generator ---


@dataclass(frozen=True)
class CountdownGeneratorConfig:
    """Random solvable Countdown tasks. Defaults follow the reference distribution: four
    numbers in [1, 13], target = a random combination of all four with positive-integer
    intermediate results (like the reference test set, where every target is reachable
    using all numbers)."""

    num_numbers: int = 4
    """How many numbers per task (>= 2)."""
    min_number: int = 1
    """Smallest number (>= 1)."""
    max_number: int = 13
    """Largest number."""
    min_target: int = 1
    """Smallest accepted target (>= 1)."""
    max_target: int = 2500
    """Largest accepted target (the reference data's largest is 2145)."""
    seed: int = 0
    """Item ``i`` is drawn from ``random.Random(seed + i)``, so it is reproducible alone."""
    max_attempts: int = 1000
    """Draws per item before giving up (only reachable with a narrow target range)."""

    def __post_init__(self) -> None:
        ints = ("num_numbers", "min_number", "max_number", "min_target", "max_target",
                "seed", "max_attempts")  # fmt: skip
        for name in ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"CountdownGeneratorConfig.{name} must be an int, got {value!r}")
        if not 2 <= self.num_numbers <= 8:
            raise ValueError(f"num_numbers must be in [2, 8], got {self.num_numbers}")
        if not 1 <= self.min_number <= self.max_number:
            raise ValueError(
                f"need 1 <= min_number <= max_number, got {self.min_number}, {self.max_number}"
            )
        if not 1 <= self.min_target <= self.max_target:
            raise ValueError(
                f"need 1 <= min_target <= max_target, got {self.min_target}, {self.max_target}"
            )
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")


def generate_task(config: CountdownGeneratorConfig, index: int) -> CountdownTask:
    """Item ``index`` of the generated data set, from ``Random(config.seed + index)``."""
    rng = random.Random(config.seed + index)
    for _ in range(config.max_attempts):
        numbers = [
            rng.randint(config.min_number, config.max_number) for _ in range(config.num_numbers)
        ]
        pool = list(numbers)
        while len(pool) > 1:
            a = pool.pop(rng.randrange(len(pool)))
            b = pool.pop(rng.randrange(len(pool)))
            options = [s[3] for s in _combine(a, b, integer_only=True)]
            if not options:
                break
            pool.append(rng.choice(options))
        if len(pool) == 1 and config.min_target <= pool[0] <= config.max_target:
            return CountdownTask(tuple(numbers), int(pool[0]))
    raise ValueError(
        f"no task in {config.max_attempts} attempts for item {index}; widen the target range"
    )


def generate_tasks(config: CountdownGeneratorConfig, size: int) -> tuple[CountdownTask, ...]:
    """Items ``0 .. size-1`` (pass to ``CountdownEnv(tasks=...)``)."""
    return tuple(generate_task(config, i) for i in range(size))


# --- environment ---


class CountdownEnv(ReasoningEnv[CountdownTask]):
    """Countdown as a text environment: reach the target with + - * / on given numbers.

    ## Description

    A task is a list of numbers (four in [1, 13] in the reference data) and a target. The
    agent reasons in steps that each combine two available numbers, then answers with one
    expression in the original numbers. Answers are verified exactly (``fractions``) by a
    whitelist parser, never ``eval``; see ``langrl.envs.safe_arithmetic``.

    ## Action Space

    ``UnicodeText(max_action_chars)``: one action per ``step`` call, surrounding whitespace
    ignored:

    - ``<step>7 * 4 = 28</step>``: one reasoning step. Intermediate reward ``step_reward``
      (0). The step is checked exactly against the numbers still available (the given ones,
      minus operands of earlier ``ok`` steps, plus their results); the verdict is in
      ``info["step_check"]``: ``ok``, ``parse_error``, ``not_binary``,
      ``unavailable_number`` or ``arith_error``. It never ends the episode.
    - ``<answer>(7 * 4) - 5 + 1</answer>``: the final answer, an expression with ``+ - * /``,
      parentheses and unary signs in the ORIGINAL numbers, each at most once (exactly once
      with ``use_all_numbers=True``). ``**``, ``=``, ``x``, ``^``, non-ASCII digits and
      anything else are rejected. Ends the episode.
    - Anything else (no closing tag, e.g. cut off by a token limit; two tags in one action;
      text outside the tags) is malformed and ends the episode; an empty action ends it as
      "no answer". ``split_actions`` cuts a whole completion into actions.

    ## Observation Space

    ``UnicodeText(max_observation_chars)``: the transcript, i.e. the plain prompt
    ``"Numbers: 3 5 7 2\\nTarget: 24\\n"`` followed by every action so far, concatenated
    exactly as given (no separators added).

    ## Rewards

    Named fields of ``RewardConfig`` (``reward="dense"`` | ``"sparse"`` | an instance):

    | field                   | dense (training)            | sparse (evaluation) |
    |-------------------------|-----------------------------|---------------------|
    | correct_reward          | 1                           | 1                   |
    | wrong_reward            | -1, with distance_shaping:  | 0                   |
    |                         | ``1 - 2 * min(|t-p|/t, 1)`` |                     |
    | format_failure_reward   | -1                          | 0                   |
    | no_answer_reward        | -1                          | 0                   |
    | step_reward             | 0                           | 0                   |
    | invalid_step_reward     | 0 (optional process signal) | 0                   |

    Format failures: malformed action, oversized action, unparsable answer, numbers not
    given or reused (``bad_numbers``), division by zero.

    ## Starting State

    ``reset(seed=..., options=...)`` draws a task uniformly from the data set with
    ``self.np_random``, or takes it from ``options``: ``{"numbers": [3, 5, 7, 2],
    "target": 24}`` or ``{"index": i}``. It returns the plain prompt and ``info`` with
    ``task`` (``{"numbers": [...], "target": t}``), ``prompt`` (the plain prompt),
    ``messages`` (chat form: a system message explaining the step/answer tags with an
    example, and a user message holding the plain prompt) and ``index`` (or None).

    ## Episode End

    Termination: an ``<answer>`` (graded), a malformed or oversized action, or an empty
    action. Truncation: the step limit (the registry's ``max_episode_steps``, or the
    ``max_steps`` argument) reached by a ``<step>``, or the transcript would exceed
    ``max_observation_chars``; the truncating transition earns ``no_answer_reward``.

    Every ending step's ``info`` has ``reason`` (``correct``, ``wrong_value``,
    ``bad_numbers``, ``parse_error``, ``invalid_character``, ``too_long``, ``too_deep``,
    ``number_too_large``, ``too_many_numbers``, ``division_by_zero``, ``empty``,
    ``malformed_action``, ``action_too_long``, ``no_answer``, ``step_limit``,
    ``context_limit``), ``detail``, ``value`` (the exact parsed value, int or Fraction, or
    None) and ``is_correct``; steps have ``reason="step"``.

    ## Arguments

    ```python
    gym.make("Countdown-v0", split="train", data_path=None, tasks=None, reward="dense",
             use_all_numbers=False, max_steps=None, max_action_chars=1024,
             max_observation_chars=8192, render_mode=None)
    ```

    ``split``: ``"train"`` (20,000) or ``"test"`` (820). ``data_path``: a data directory or
    JSONL file (default: ``$LANGRL_DATA`` or ``<repo>/../shared/data``), loaded on the first
    reset that needs it. ``tasks``: a sequence of ``CountdownTask`` (e.g. from
    ``generate_tasks``) used instead of a file. Tree search: ``get_state()``,
    ``set_state(state)``, ``clone()`` (see ``ReasoningState``).

    ## Version History

    * v0: Initial version.
    """

    REWARD_PRESETS = {
        "dense": RewardConfig(
            correct_reward=1.0,
            wrong_reward=-1.0,
            distance_shaping=True,
            format_failure_reward=-1.0,
            no_answer_reward=-1.0,
        ),
        "sparse": RewardConfig(),
    }
    TASK_TYPE = CountdownTask
    load_tasks = staticmethod(load_countdown)
    TASK_OPTION_KEYS = frozenset({"numbers", "target"})

    def __init__(
        self,
        *,
        split: str = "train",
        data_path: str | PathLike | None = None,
        tasks: Sequence[CountdownTask] | None = None,
        reward: str | RewardConfig = "dense",
        use_all_numbers: bool = False,
        max_steps: int | None = None,
        max_action_chars: int = 1024,
        max_observation_chars: int = 8192,
        render_mode: str | None = None,
    ) -> None:
        super().__init__(
            split=split,
            data_path=data_path,
            tasks=tasks,
            reward=reward,
            max_steps=max_steps,
            max_action_chars=max_action_chars,
            max_observation_chars=max_observation_chars,
            render_mode=render_mode,
        )
        self.use_all_numbers = bool(use_all_numbers)

    def _task_from_options(self, options: dict[str, Any]) -> CountdownTask:
        if set(options) != self.TASK_OPTION_KEYS:
            raise ValueError(
                f"reset options need both 'numbers' and 'target', got {sorted(options)}"
            )
        numbers = options["numbers"]
        if isinstance(numbers, (str, bytes)) or not isinstance(numbers, Sequence):
            raise ValueError(f"options['numbers'] must be a list of ints, got {numbers!r}")
        return CountdownTask(tuple(int(n) if _is_int(n) else n for n in numbers),
                             int(options["target"]) if _is_int(options["target"]) else options["target"])  # fmt: skip

    def format_prompt(self, task: CountdownTask) -> str:
        return format_prompt(task)

    def format_messages(self, task: CountdownTask) -> list[dict[str, str]]:
        system = SYSTEM_PROMPT_ALL_NUMBERS if self.use_all_numbers else SYSTEM_PROMPT
        return [
            {"role": "system", "content": system},
            {"role": "user", "content": format_prompt(task)},
        ]

    def grade_answer(self, task: CountdownTask, content: str) -> Grade:
        return grade_answer(content, task, use_all_numbers=self.use_all_numbers)

    def _initial_progress(self, task: CountdownTask) -> tuple[Number, ...]:
        return task.numbers

    def _check_step(
        self, task: CountdownTask, content: str, progress: tuple[Any, ...]
    ) -> tuple[str, str, tuple[Any, ...]]:
        return check_step(content, progress)


def _is_int(value: Any) -> bool:
    # numpy integers are common in options built from arrays; bools are not numbers here.
    return not isinstance(value, bool) and hasattr(value, "__index__")
