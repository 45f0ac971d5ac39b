"""The whitelist parser behind every verifier: exact values, bounded cost, clear reasons."""

from __future__ import annotations

from fractions import Fraction

import pytest

from langrl.envs.safe_arithmetic import (
    ArithmeticLimits,
    BinOp,
    Neg,
    Num,
    SafeArithmeticError,
    format_number,
    parse_expression,
)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("10 - 4 - 3", 3),  # left-associative
        ("12 / 4 / 3", 1),
        ("7 / 2", Fraction(7, 2)),
        ("1 / 3 + 1 / 6", Fraction(1, 2)),
        ("-3 + 5", 2),
        ("-(2 - 7)", 5),
        ("+4", 4),
        ("0.75", Fraction(3, 4)),
        (".5 * 4", 2),
        (" \t(7 * 4) - 5 + 1\n", 24),
        ("0.1 + 0.2", Fraction(3, 10)),  # exact, unlike floats
    ],
)
def test_values_are_exact(text, value):
    parsed = parse_expression(text)
    assert parsed.value == value
    assert type(parsed.value) is type(value)  # ints stay ints


def test_literals_and_tree():
    parsed = parse_expression("(7 * 4) - 5 + -1")
    assert parsed.literals == (7, 4, 5, 1)
    root = parsed.root
    assert isinstance(root, BinOp) and root.op == "+"
    assert isinstance(root.right, Neg) and isinstance(root.right.operand, Num)
    assert root.left.left.parenthesized and root.left.left.op == "*"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("1" * 300, "too_long"),
        ("2 ** 3", "parse_error"),
        ("2 // 3", "parse_error"),
        ("(1 + 2", "parse_error"),
        ("1 + 2)", "parse_error"),
        ("3 (4)", "parse_error"),
        ("1 2", "parse_error"),
        ("3.", "parse_error"),
        ("1 / 0", "division_by_zero"),
        ("1 / (2 - 2)", "division_by_zero"),
        ("\u0663 + 1", "invalid_character"),  # Arabic-Indic three
        ("\uff13 + 1", "invalid_character"),  # fullwidth three
        ("1e5", "invalid_character"),
        ("0x10", "invalid_character"),
        ("1_000", "invalid_character"),
        ("__import__('os')", "invalid_character"),
        ("2^3", "invalid_character"),
        ("1\u00a0+ 1", "invalid_character"),  # no-break space is not ASCII whitespace
        ("9" * 41, "number_too_large"),
        ("(" * 40 + "1" + ")" * 40, "too_deep"),
        ("-" * 40 + "1", "too_deep"),
    ],
)
def test_rejections_have_reasons(text, reason):
    with pytest.raises(SafeArithmeticError) as excinfo:
        parse_expression(text)
    assert excinfo.value.reason == reason
    assert isinstance(excinfo.value, ValueError)


def test_intermediate_size_is_bounded():
    limits = ArithmeticLimits(max_bits=64)
    parse_expression("99999999 * 99999999", limits)
    with pytest.raises(SafeArithmeticError, match="number_too_large"):
        parse_expression("99999999 * 99999999 * 99999999", limits)
    with pytest.raises(SafeArithmeticError, match="too_many_numbers"):
        parse_expression("1+1+1", ArithmeticLimits(max_literals=2))
    with pytest.raises(SafeArithmeticError, match="parse_error"):
        parse_expression("0.5", ArithmeticLimits(allow_decimals=False))


def test_limits_are_validated():
    for bad in ({"max_chars": 0}, {"max_depth": -1}, {"max_bits": 1.5}, {"max_digits": True}):
        with pytest.raises(ValueError):
            ArithmeticLimits(**bad)


def test_non_string_input_is_a_type_error():
    with pytest.raises(TypeError):
        parse_expression(b"1 + 1")  # type: ignore[arg-type]


def test_format_number():
    assert [format_number(v) for v in (28, -3, Fraction(7, 2), Fraction(4, 2))] == [
        "28",
        "-3",
        "7/2",
        "2",
    ]
