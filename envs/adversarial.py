"""Adversarial corpus for the verifiers, shared by ``tests/envs`` and
``benchmarks/bench_graders.py`` (one copy).

Each case is one action sent to an env reset on a fixed task (``COUNTDOWN_TASK`` or
``GSM8K_TASK``); the env must end the episode with the failure reward of its mode and the
expected ``info["reason"]``, within 10 ms.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AdversarialCase", "CASES", "COUNTDOWN_TASK", "GSM8K_TASK", "MAX_SECONDS"]

#: Upper bound on the time one adversarial step may take.
MAX_SECONDS = 0.010

COUNTDOWN_TASK = {"numbers": [5, 13, 5, 9], "target": 31}
GSM8K_TASK = {"question": "Janet has 9 eggs and buys 9 more. How many eggs?", "answer": "#### 18"}


@dataclass(frozen=True)
class AdversarialCase:
    env: str
    """``countdown`` or ``gsm8k``."""
    name: str
    action: str
    reason: str
    """Expected ``info["reason"]``."""


def _answer(text: str) -> str:
    return f"<answer>{text}</answer>"


_MEGA = 10**6

_COMMON: tuple[tuple[str, str, str], ...] = (
    # (name, action, reason) valid for both envs
    ("million_char_answer", _answer("1" * _MEGA), "action_too_long"),
    ("million_char_step", "<step>" + "1+" * (_MEGA // 2) + "</step>", "action_too_long"),
    ("million_char_garbage", "x" * _MEGA, "action_too_long"),
    ("unclosed_answer", "<answer>13 + 9", "malformed_action"),
    ("unclosed_step_cut_off", "<step>13 + 9 = 2", "malformed_action"),
    ("nested_answer", "<answer><answer>18</answer></answer>", "malformed_action"),
    ("two_tags_one_action", "<step>1 + 1 = 2</step><answer>18</answer>", "malformed_action"),
    ("text_before_tag", "So: <answer>18</answer>", "malformed_action"),
    ("uppercase_tag", "<ANSWER>18</ANSWER>", "malformed_action"),
    ("empty_answer", _answer(""), "empty"),
    ("whitespace_answer", _answer(" \n\t "), "empty"),
    ("arabic_indic_digits", _answer("\u0661\u0668"), "invalid_character"),
    ("fullwidth_digits", _answer("\uff11\uff18"), "invalid_character"),
    ("devanagari_digits", _answer("\u0967\u096e"), "invalid_character"),
    ("empty_action", "", "no_answer"),
    ("whitespace_action", "  \n ", "no_answer"),
)

_COUNTDOWN: tuple[tuple[str, str, str], ...] = (
    ("division_by_zero", _answer("13 / (5 - 5)"), "division_by_zero"),
    ("dunder_import", _answer("__import__('os').system('ls')"), "invalid_character"),
    ("eval_call", _answer("eval('13+9+9')"), "invalid_character"),
    ("lambda", _answer("(lambda: 31)()"), "invalid_character"),
    ("power_operator", _answer("13 ** 5 - 9"), "parse_error"),
    ("power_tower", _answer("9**9**9**9"), "parse_error"),
    ("caret", _answer("5 ^ 13"), "invalid_character"),
    ("floor_division", _answer("13 // 5"), "parse_error"),
    ("exponent_notation", _answer("1e999"), "invalid_character"),
    ("hex_literal", _answer("0x1F"), "invalid_character"),
    ("underscore_literal", _answer("1_3 + 9"), "invalid_character"),
    ("giant_literal", _answer("9" * 200), "number_too_large"),
    ("long_expression", _answer("5+" * 200 + "5"), "too_long"),
    ("deep_parentheses", _answer("(" * 100 + "5" + ")" * 100), "too_deep"),
    ("deep_unary_minus", _answer("-" * 200 + "5"), "too_deep"),
    ("unbalanced_open", _answer("(13 + 9"), "parse_error"),
    ("unbalanced_close", _answer("13 + 9)"), "parse_error"),
    ("implicit_multiplication", _answer("5(13)"), "parse_error"),
    ("trailing_operator", _answer("13 + 9 +"), "parse_error"),
    ("equation_not_expression", _answer("13 + 9 + 9 = 31"), "invalid_character"),
    ("times_sign", _answer("13 \u00d7 5"), "invalid_character"),
    ("unicode_minus", _answer("13 \u2212 5"), "invalid_character"),
    ("null_byte", _answer("13\x00+5"), "invalid_character"),
    ("zero_width_space", _answer("1\u200b3 + 5"), "invalid_character"),
    ("rtl_override", _answer("\u202e13 + 5"), "invalid_character"),
    ("number_not_given", _answer("13 + 18"), "bad_numbers"),
    ("number_reused", _answer("13 + 13 + 5"), "bad_numbers"),
    ("decimal_not_given", _answer("13.5 + 9"), "bad_numbers"),
    ("target_as_answer", _answer("31"), "bad_numbers"),
    ("many_literals", _answer("+".join(["5"] * 40)), "too_many_numbers"),
)

_GSM8K: tuple[tuple[str, str, str], ...] = (
    ("division_by_zero", _answer("18/0"), "division_by_zero"),
    ("dunder_import", _answer("__import__('os').system('ls')"), "no_number"),
    ("words_only", _answer("eighteen"), "no_number"),
    ("nan", _answer("NaN"), "no_number"),
    ("infinity", _answer("inf"), "no_number"),
    ("two_numbers", _answer("17 or 19"), "ambiguous_answer"),
    ("exponent_notation", _answer("1.8e1"), "ambiguous_answer"),
    ("vulgar_fraction", _answer("18\u00bd"), "invalid_character"),
    ("superscript_digit", _answer("18\u00b2"), "invalid_character"),
    ("giant_number", _answer("9" * 200), "number_too_large"),
    ("too_long_answer", _answer("1 " + "a" * 300), "too_long"),
    ("deep_parentheses", _answer("(" * 300 + "18" + ")" * 300), "too_long"),
)

CASES: tuple[AdversarialCase, ...] = tuple(
    AdversarialCase(env, name, action, reason)
    for env, rows in (
        ("countdown", _COMMON + _COUNTDOWN),
        ("gsm8k", _COMMON + _GSM8K),
    )
    for name, action, reason in rows
)
