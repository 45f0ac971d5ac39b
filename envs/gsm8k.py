"""GSM8K: grade-school math word problems with a numeric final answer.

Holds the prompt template, the exact numeric answer normaliser/grader, a per-step
arithmetic checker for free-text steps, the data loader and ``GSM8KEnv``. Data: the
original GSM8K release (Cobbe et al., 2021, arXiv:2110.14168), where the gold answer
follows ``#### `` at the end of ``answer``.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from fractions import Fraction
from os import PathLike
from typing import Any

from langrl.envs.base import Grade, ReasoningEnv, RewardConfig
from langrl.envs.datasets import load_jsonl_tasks, resolve_data_file
from langrl.envs.safe_arithmetic import (
    ArithmeticLimits,
    BinOp,
    Number,
    SafeArithmeticError,
    format_number,
    parse_expression,
)
from langrl.envs.symbolic import Relations, check_equations, written_value_matches

__all__ = [
    "GSM8KEnv",
    "GSM8KTask",
    "MAX_ANSWER_CHARS",
    "SYSTEM_PROMPT",
    "check_solution_step",
    "check_step",
    "extract_gold",
    "format_prompt",
    "grade_answer",
    "load_gsm8k",
    "parse_numeric_answer",
]

SYSTEM_PROMPT = (
    "Solve the math word problem. Show your work one step at a time, inside <step></step> "
    "tags, one step per tag. Then write only the final number inside <answer></answer> "
    "tags.\n"
    "Example:\n"
    "Question: Tom has 3 boxes with 4 apples each and eats 2 apples. How many apples are "
    "left?\n"
    "Answer:\n"
    "<step>3 boxes hold 3 * 4 = 12 apples.</step><step>After eating 2, 12 - 2 = 10 apples "
    "are left.</step><answer>10</answer>"
)

#: Longest accepted answer content (after stripping whitespace), in characters.
MAX_ANSWER_CHARS = 256
#: Bounds on one number of an answer and on each equation side inside a step.
NUMBER_LIMITS = ArithmeticLimits(
    max_chars=MAX_ANSWER_CHARS, max_depth=4, max_digits=40, max_literals=2
)
EQUATION_LIMITS = ArithmeticLimits(max_chars=128, max_depth=8, max_digits=40, max_literals=16)
_MAX_EQUATIONS = 16

# A number as people write it once "$", "%" and thousands commas are gone: optional sign,
# digits with optional decimals (or ".5"), optionally "/ denominator". The lookbehind stops
# a match from starting inside another number ("1.5.3", "12/3/4").
_NUMBER = re.compile(
    r"(?<![0-9./])([-+]?)[ \t]*([0-9]+(?:\.[0-9]+)?|\.[0-9]+)(?:[ \t]*/[ \t]*([0-9]+))?(?![0-9])",
    re.ASCII,
)
_THOUSANDS = re.compile(r"(?<=[0-9]),(?=[0-9]{3}(?![0-9]))", re.ASCII)
_DOTTED = re.compile(r"[0-9]\.[0-9]+\.[0-9]", re.ASCII)
_UNICODE_MINUS = str.maketrans({"\u2212": "-", "\u2013": "-"})


@dataclass(frozen=True)
class GSM8KTask:
    """One problem: ``question``, the reference ``answer`` text, and its exact ``gold``."""

    question: str
    answer: str
    gold: int | Fraction

    def to_dict(self) -> dict[str, Any]:
        return {"question": self.question, "answer": self.answer}


def format_prompt(task: GSM8KTask) -> str:
    """``"Question: {question}\\nAnswer:\\n"`` (a format the tokenizer and model rely on)."""
    return f"Question: {task.question}\nAnswer:\n"


def parse_numeric_answer(content: str) -> Number:
    """The exact number in untrusted answer text, after normalisation.

    Accepts ``72``, ``$72``, ``72 dollars``, ``1,000``, ``-5``, ``+5``, ``0.75``, ``.75``,
    ``3/4``, ``2 1/2``, ``50%`` (= 50), ``72.`` and ``x = 72`` (the last ``=`` wins).
    Raises ``SafeArithmeticError`` with reason ``empty``, ``too_long``,
    ``invalid_character`` (non-ASCII digits such as ``٧٢`` or ``７２``, or ``½``),
    ``no_number``, ``ambiguous_answer`` (several numbers), ``number_too_large`` or
    ``division_by_zero``.
    """
    text = content.strip()
    if not text:
        raise SafeArithmeticError("empty", "no answer")
    if len(text) > MAX_ANSWER_CHARS:
        raise SafeArithmeticError("too_long", f"{len(text)} characters > {MAX_ANSWER_CHARS}")
    for ch in text:
        # int() and str.isdigit() accept Arabic-Indic, fullwidth, ... digits: refuse them
        # rather than silently reading a different number than the one displayed.
        if ch > "\x7f" and (ch.isnumeric() or unicodedata.category(ch) == "Nd"):
            raise SafeArithmeticError(
                "invalid_character", f"non-ASCII digit {ch!r} (U+{ord(ch):04X})"
            )
    text = text.translate(_UNICODE_MINUS)
    if "=" in text:
        text = text.rsplit("=", 1)[1]
    text = _THOUSANDS.sub("", text.replace("$", "").replace("%", ""))
    if _DOTTED.search(text):
        raise SafeArithmeticError("ambiguous_answer", "a number with two decimal points")
    matches = list(_NUMBER.finditer(text))
    if not matches:
        raise SafeArithmeticError("no_number", "no number in the answer")
    if len(matches) == 2 and _is_mixed_number(text, matches[0], matches[1]):
        whole = _number_value(matches[0])
        part = _number_value(matches[1])
        return whole + part if whole >= 0 else whole - part
    if len(matches) > 1:
        shown = ", ".join(m.group(0).strip() for m in matches[:4])
        raise SafeArithmeticError("ambiguous_answer", f"several numbers: {shown}")
    return _number_value(matches[0])


def _is_mixed_number(text: str, first: re.Match, second: re.Match) -> bool:
    """``2 1/2``: an integer, whitespace, then an unsigned proper fraction."""
    return (
        "." not in first.group(2)
        and first.group(3) is None
        and not second.group(1)
        and second.group(3) is not None
        and "." not in second.group(2)
        and text[first.end() : second.start()].isspace()
        and 0 < int(second.group(2)) < int(second.group(3))
    )


def _number_value(match: re.Match) -> Number:
    sign, num, den = match.groups()
    expr = f"{sign}{num}" if den is None else f"{sign}{num}/{den}"
    return parse_expression(expr, NUMBER_LIMITS).value


def extract_gold(answer: str) -> Number:
    """The gold number of a GSM8K ``answer`` (the text after the last ``####``, or the
    whole string if there is none)."""
    text = answer.rsplit("####", 1)[1] if "####" in answer else answer
    return parse_numeric_answer(text)


def grade_answer(content: str, gold: Number) -> Grade:
    """``correct`` / ``wrong_value`` by exact comparison (``3/4 == 0.75``), else the parse
    failure reason."""
    try:
        value = parse_numeric_answer(content)
    except SafeArithmeticError as exc:
        return Grade(exc.reason, detail=exc.message)
    if value == gold:
        return Grade("correct", value)
    return Grade("wrong_value", value, f"= {format_number(value)}, gold {format_number(gold)}")


_EQ_LEFT_CHARS = frozenset("0123456789.+-*/() $,\t")
# A character just before an equation's left side that means the expression goes on
# beyond what we can read ("400 x 3/100", "3x + 4"): such equations are left unchecked.
_EQ_CONTINUES = frozenset("xX\u00d7*^%")
# The number right after "=": optional "$", a signed decimal with thousands commas, then
# optionally a fraction "/ q" or a mixed-number fraction " p/q".
_RHS = re.compile(
    r"[ \t]*\$?[ \t]*(-?(?:[0-9][0-9,]*(?:\.[0-9]+)?|\.[0-9]+))"
    r"(?:[ \t]+([0-9]+)/([0-9]+)|[ \t]*/[ \t]*([0-9]+))?",
    re.ASCII,
)


def check_step(content: str) -> tuple[str, str]:
    """Check the equations written in one free-text step, on its own (no earlier steps).

    Returns ``(verdict, detail)``: ``ok`` (at least one equation checked, all right),
    ``arith_error`` (one is wrong) or ``unchecked`` (nothing checkable). The same as
    ``check_solution_step(content)`` without the variables: see there.
    """
    verdict, detail, _ = check_solution_step(content)
    return verdict, detail


def check_solution_step(content: str, relations: Relations = ()) -> tuple[str, str, Relations]:
    """Check one step of a solution, given the variables its earlier steps fixed.

    Two readers look at every ``=``:

    - exact arithmetic (``safe_arithmetic``): every ``<expr> = <number>`` with at least one
      operator (``16 - 3 - 4 = 9 eggs``, ``$<<9*2=18>>18``, ``1/2 * 1/2 = 1/4``), a result
      written with k decimals may be rounded to k decimals, and a tight fraction may be one
      number (``25 / 1/3 = 75``: either the precedence reading or this one must fit);
    - the symbolic reader (``symbolic.check_equations``, sympy built from a whitelist
      parse), for the equations arithmetic skips: identities with variables (``2x + 3x =
      5x``), variables fixed by earlier equations (``x + x + 30 = 110`` fixes ``x = 40``,
      then ``2*x = 80`` is checked), units (``12 customers - 5 customers = 7 customers``),
      percents (``50% * 50% = 25%``), implicit multiplication and ``x`` as times
      (``27(1/3) = 9``, ``40 x .5 = 20``), mixed numbers and chains (``V + 2V = 3V = 33``).

    ``relations`` are the equations earlier steps established (``()`` at the start of a
    solution); the result carries them on. Returns ``(verdict, detail, relations)``: ``ok``
    (at least one
    equation checked, none wrong), ``arith_error`` (one is wrong; ``detail`` says which) or
    ``unchecked`` (nothing checkable: prose, an equation that only fixes a variable, several
    unknowns, a unit conversion, anything beyond the readers' bounds). Equations whose
    sides visibly continue (``= 14 / 2 = 7``'s first ``=`` for arithmetic, ``1 hour 20
    minutes = ...``) or whose left operand is a word (``He works M + 4 + 2 = 8 hours`` is read
    as fixing ``M``) are skipped rather than guessed.
    Cost is bounded whatever the content: arithmetic looks at most
    ``EQUATION_LIMITS.max_chars`` characters to the left of each ``=`` and 64 to its right and
    checks at most 16 equations (64 ``=`` examined); the symbolic reader's bounds are
    ``symbolic.SymbolicLimits`` (sympy never sees an expression over its degree, term or
    symbol bounds).
    """
    content = content.translate(_UNICODE_MINUS)  # same length: positions stay valid
    verdict, detail, checked = _check_arithmetic(content)
    sym_verdict, sym_detail, relations = check_equations(content, relations, skip=checked)
    if verdict == "arith_error":
        return verdict, detail, relations
    if sym_verdict == "arith_error":
        return sym_verdict, sym_detail, relations
    if "ok" in (verdict, sym_verdict):
        return "ok", "", relations
    return "unchecked", "", relations


def _check_arithmetic(content: str) -> tuple[str, str, list[int]]:
    """Exact arithmetic on ``<expr> = <number>``: (verdict, detail, positions of the ``=``
    it judged)."""
    checked: list[int] = []
    examined = 0
    pos = content.find("=")
    while pos != -1 and len(checked) < _MAX_EQUATIONS and examined < 4 * _MAX_EQUATIONS:
        examined += 1
        start = pos
        while (
            start > 0
            and pos - start < EQUATION_LIMITS.max_chars
            and content[start - 1] in _EQ_LEFT_CHARS
        ):
            start -= 1
        before = content[start - 1] if start > 0 else " "
        continues = before in _EQ_CONTINUES or (before.isalnum() and content[start] not in " \t(")
        left = _THOUSANDS.sub("", content[start:pos].replace("$", "")).strip()
        right = None if continues else _rhs_number(content, pos + 1)
        if left and right is not None and any(op in left.lstrip("(+-") for op in "+-*/"):
            # Drop unmatched leading "(" such as "(so 3 * 4 = 12)".
            while left.count("(") > left.count(")") and left.startswith("("):
                left = left[1:].lstrip()
            if _operand_missing(left, content[:start]):
                pos = content.find("=", pos + 1)
                continue
            try:
                lhs = parse_expression(left, EQUATION_LIMITS)
            except SafeArithmeticError:
                lhs = None
            if lhs is not None and isinstance(lhs.root, BinOp):
                checked.append(pos)
                value, text = right
                if not written_value_matches(lhs.value, value, text) and not _matches_grouped(
                    left, value, text
                ):
                    detail = f"{left} = {format_number(lhs.value)}, not {text}"
                    return "arith_error", detail, checked
        pos = content.find("=", pos + 1)
    return ("ok" if checked else "unchecked"), "", checked


def _operand_missing(left: str, before: str) -> bool:
    """The left side starts with a binary operator whose left operand is a word we cannot
    read: ``M + 4 + 2`` (from ``He works M + 4 + 2 = 8 hours``), ``y + 5 + 2``, ``3M - 4``.
    After a non-word (``Total: -3 + 5``, GSM8K's ``<<+30+46=76>>``) it is a sign, checked."""
    previous = before.rstrip(" \t$")[-1:]
    return left[:1] in ("+", "-", "*", "/") and (previous.isalnum() or previous == ")")


# A fraction written tight (``1/3``) inside an expression: writers mean it as one number,
# ``25 / 1/3 = 75`` is ``25 / (1/3)``, although precedence reads ``(25 / 1) / 3``.
_TIGHT_FRACTION = re.compile(r"(?<![0-9.)/])([0-9]+(?:\.[0-9]+)?/[0-9]+(?:\.[0-9]+)?)(?![0-9./(])")


def _matches_grouped(left: str, written: Number, text: str) -> bool:
    """``written`` is the value of ``left`` with each tight fraction taken as one number
    (``25 / 1/3`` = 75), a reading that differs from precedence's only after ``/`` (or a
    power); ``check_step`` accepts either reading and flags a value that fits neither."""
    grouped = _TIGHT_FRACTION.sub(r"(\1)", left)
    if grouped == left:
        return False
    try:
        return written_value_matches(
            parse_expression(grouped, EQUATION_LIMITS).value, written, text
        )
    except SafeArithmeticError:
        return False


def _rhs_number(content: str, start: int) -> tuple[Number, str] | None:
    """The number right after ``=``, or None if there is none or the right side goes on
    (``= 14 / 2 = 7``, ``= 50%``, ``= 1.2Y``, ``= 12 000``)."""
    m = _RHS.match(content, start, min(len(content), start + 64))
    if m is None:
        return None
    tail = content[m.end() : m.end() + 8]
    if tail[:1].isalnum() or tail[:1] in (".", ","):
        if not (tail[:1] in (".", ",") and not tail[1:2].isdigit()):
            return None
    follow = tail.lstrip(" \t")
    if follow[:1] in ("%", "+", "-", "*", "/", "^", "=", "(", "\u00d7") or follow[:1].isdigit():
        return None
    whole, num, den, den2 = m.groups()
    whole = _THOUSANDS.sub("", whole.rstrip(","))
    try:
        value = parse_expression(whole, NUMBER_LIMITS).value
        if num is not None:
            part = Fraction(int(num), int(den)) if int(den) else None
            if part is None or "." in whole:
                return None
            value = value + part if value >= 0 else value - part
        elif den2 is not None:
            value = parse_expression(f"{whole}/{den2}", NUMBER_LIMITS).value
    except SafeArithmeticError:
        return None
    return value, m.group(0).strip(" \t$")


def load_gsm8k(
    split: str = "train", data_path: str | PathLike | None = None
) -> tuple[GSM8KTask, ...]:
    """GSM8K tasks from ``{"question", "answer"}`` JSONL (see ``datasets``)."""
    return load_jsonl_tasks(resolve_data_file("gsm8k", split, data_path), _parse_row)


def _parse_row(row: dict[str, Any], where: str) -> GSM8KTask:
    question, answer = row.get("question"), row.get("answer")
    if not isinstance(question, str) or not isinstance(answer, str):
        raise ValueError(f"{where}: expected string fields 'question' and 'answer'")
    try:
        gold = extract_gold(answer)
    except SafeArithmeticError as exc:
        raise ValueError(f"{where}: cannot read the gold answer ({exc})") from exc
    return GSM8KTask(question, answer, gold)


class GSM8KEnv(ReasoningEnv[GSM8KTask]):
    """GSM8K as a text environment: free-text reasoning steps, one numeric answer.

    ## Description

    A task is a grade-school math word problem (Cobbe et al., 2021). The agent writes
    free-text reasoning steps, then the final number. The answer is normalised and
    compared exactly (``fractions``) with the gold number; nothing is ``eval``-ed.

    ## Action Space

    ``UnicodeText(max_action_chars)``: one action per ``step`` call, surrounding whitespace
    ignored:

    - ``<step>She sells 16 - 3 - 4 = 9 eggs.</step>``: one free-text step, intermediate
      reward ``step_reward`` (0). The equations in it are checked (``check_solution_step``):
      ``<expr> = <number>`` exactly, and with sympy (built from a whitelist parse, never
      from the text) identities such as ``2x + 3x = 5x``, equations whose variables earlier
      steps fixed (``x + x + 30 = 110``, then ``2*x = 80``), units (``12 customers - 5
      customers = 7 customers``), percents, implicit multiplication and ``x`` as times. The
      verdict is in ``info["step_check"]`` (``step_detail`` says why): ``ok`` (something
      checked, nothing wrong), ``arith_error`` (a wrong result, a false identity, or an
      equation that contradicts the earlier steps' equations) or ``unchecked`` (nothing
      checkable, including an equation that only fixes a variable). The equations
      established so far are the state's ``progress`` (``symbolic.Relations``).
    - ``<answer>72</answer>``: the final answer; ``$``, thousands commas, ``%``, a trailing
      ``.``, words/units, signs, decimals, fractions and ``x = 72`` are normalised
      (``3/4`` equals ``0.75``). Several numbers (``5 or 6``), none, or non-ASCII digits are
      format failures. Ends the episode.
    - Anything else (no closing tag, two tags in one action, text outside the tags) is
      malformed and ends the episode; an empty action ends it as "no answer".

    ## Observation Space

    ``UnicodeText(max_observation_chars)``: the transcript, i.e. the plain prompt
    ``"Question: {question}\\nAnswer:\\n"`` followed by every action so far, concatenated
    exactly as given.

    ## Rewards

    Named fields of ``RewardConfig`` (``reward="dense"`` | ``"sparse"`` | an instance):

    | field                 | dense (training) | sparse (evaluation) |
    |-----------------------|------------------|---------------------|
    | correct_reward        | 1                | 1                   |
    | wrong_reward          | 0                | 0                   |
    | format_failure_reward | -1               | 0                   |
    | no_answer_reward      | -1               | 0                   |
    | step_reward           | 0                | 0                   |
    | invalid_step_reward   | 0 (optional)     | 0                   |

    ## Starting State

    ``reset(seed=..., options=...)`` draws a problem uniformly with ``self.np_random``, or
    takes it from ``options``: ``{"question": q, "answer": a}`` (``a`` a number or a
    solution ending in ``#### 72``) or ``{"index": i}``. ``info`` has ``task``
    (``{"question", "answer"}``), ``prompt`` (plain prompt), ``messages`` (chat form: a
    system message explaining the step/answer tags with an example, and the user message)
    and ``index`` (or None).

    ## Episode End

    Termination: an ``<answer>``, a malformed, oversized or empty action. Truncation: the
    step limit (registry ``max_episode_steps`` or ``max_steps``) reached by a ``<step>``, or
    the transcript would exceed ``max_observation_chars``; graded as no answer. Ending
    steps' ``info`` holds ``reason`` (``correct``, ``wrong_value``, ``no_number``,
    ``ambiguous_answer``, ``invalid_character``, ``too_long``, ``empty``,
    ``number_too_large``, ``division_by_zero``, ``malformed_action``,
    ``action_too_long``, ``no_answer``, ``step_limit``, ``context_limit``), ``detail``,
    ``value`` (exact parsed number or None) and ``is_correct``.

    ## Arguments

    ```python
    gym.make("GSM8K-v0", split="train", data_path=None, tasks=None, reward="dense",
             max_steps=None, max_action_chars=2048, max_observation_chars=16384,
             render_mode=None)
    ```

    ``split``: ``"train"`` (7,473) or ``"test"`` (1,319); ``data_path``: a data directory
    or JSONL file (default ``$LANGRL_DATA`` or ``<repo>/../shared/data``), loaded on the
    first reset that needs it; ``tasks``: a sequence of ``GSM8KTask`` instead of a file.
    Tree search: ``get_state()``, ``set_state(state)``, ``clone()``.

    ## Version History

    * v0: Initial version.
    """

    REWARD_PRESETS = {
        "dense": RewardConfig(
            correct_reward=1.0,
            wrong_reward=0.0,
            format_failure_reward=-1.0,
            no_answer_reward=-1.0,
        ),
        "sparse": RewardConfig(),
    }
    TASK_TYPE = GSM8KTask
    load_tasks = staticmethod(load_gsm8k)
    TASK_OPTION_KEYS = frozenset({"question", "answer"})

    def _task_from_options(self, options: dict[str, Any]) -> GSM8KTask:
        question, answer = options.get("question"), options.get("answer")
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"options['question'] must be a non-empty str, got {question!r}")
        if isinstance(answer, (int, float, Fraction)) and not isinstance(answer, bool):
            answer = str(answer)
        if not isinstance(answer, str):
            raise ValueError(
                f"options['answer'] must be a number or a str ending in '#### <number>', "
                f"got {answer!r}"
            )
        try:
            gold = extract_gold(answer)
        except SafeArithmeticError as exc:
            raise ValueError(f"cannot read a gold number from options['answer']: {exc}") from exc
        return GSM8KTask(question, answer, gold)

    def format_prompt(self, task: GSM8KTask) -> str:
        return format_prompt(task)

    def format_messages(self, task: GSM8KTask) -> list[dict[str, str]]:
        return [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": format_prompt(task)},
        ]

    def grade_answer(self, task: GSM8KTask, content: str) -> Grade:
        return grade_answer(content, task.gold)

    def _check_step(
        self, task: GSM8KTask, content: str, progress: tuple[Any, ...]
    ) -> tuple[str, str, tuple[Any, ...]]:
        # progress: the equations earlier steps established (``symbolic.Relations``).
        return check_solution_step(content, progress)
