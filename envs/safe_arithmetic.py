"""Exact, bounded arithmetic on untrusted model text.

Model output is parsed by a whitelist tokenizer and a recursive-descent parser into exact
``fractions.Fraction``/``int`` values. Nothing here calls ``eval``, ``exec``, ``ast`` or
sympy on model text: the only accepted characters are ASCII digits, ``.``, ``+ - * /``,
parentheses and ASCII whitespace, and every way to make parsing expensive is bounded
(``ArithmeticLimits``): input length, nesting depth, digits per literal, number of
literals, and the bit size of every intermediate value. ``**`` is not an operator (``2**3``
is a parse error), there is no implicit multiplication, no exponent notation, and
non-ASCII digits (Arabic-Indic, fullwidth, ...) are rejected, unlike ``int()`` and
``str.isdigit`` which accept them.

Grammar (left-associative binary operators, usual precedence)::

    expr   := term (("+" | "-") term)*
    term   := unary (("*" | "/") unary)*
    unary  := ("+" | "-") unary | atom
    atom   := NUMBER | "(" expr ")"
    NUMBER := [0-9]+ ("." [0-9]+)? | "." [0-9]+

Errors are ``SafeArithmeticError`` (a ``ValueError``) whose ``reason`` is one of
``REASONS``; environments report it as the failure reason in ``info``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

__all__ = [
    "ArithmeticLimits",
    "BinOp",
    "DEFAULT_LIMITS",
    "Neg",
    "Node",
    "Num",
    "Number",
    "ParsedExpression",
    "REASONS",
    "SafeArithmeticError",
    "format_number",
    "parse_expression",
]

Number = int | Fraction

#: Failure reasons, in the order they are checked.
REASONS = (
    "empty",  # nothing but whitespace
    "too_long",  # more than max_chars characters
    "invalid_character",  # anything outside the whitelist (letters, unicode digits, '^', ...)
    "number_too_large",  # a literal with too many digits, or an intermediate too many bits
    "too_many_numbers",  # more than max_literals literals
    "too_deep",  # parentheses/unary signs nested deeper than max_depth
    "division_by_zero",
    "parse_error",  # well-formed characters in an ungrammatical order ("2**3", "(1", "1 2")
)


class SafeArithmeticError(ValueError):
    """Untrusted arithmetic text was rejected; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class ArithmeticLimits:
    """Cost bounds for parsing one untrusted expression. All must be positive."""

    max_chars: int = 256
    """Longest accepted input, in characters (checked before anything else)."""
    max_depth: int = 32
    """Deepest nesting of parentheses and unary signs (the parser recurses on these)."""
    max_digits: int = 40
    """Most digits in one literal (integer and fractional part together)."""
    max_literals: int = 64
    """Most number literals in one expression."""
    max_bits: int = 2048
    """Largest bit length of the numerator or denominator of any intermediate value."""
    allow_decimals: bool = True
    """Accept literals like ``0.75``; when False they are a ``parse_error``."""

    def __post_init__(self) -> None:
        for name in ("max_chars", "max_depth", "max_digits", "max_literals", "max_bits"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ArithmeticLimits.{name} must be a positive int, got {value!r}")


DEFAULT_LIMITS = ArithmeticLimits()


# --- syntax tree (each node carries its exact value, computed once while parsing) ---


class Num:
    """A number literal as written (``text``) and its exact value."""

    __slots__ = ("value", "text")

    def __init__(self, value: Number, text: str) -> None:
        self.value = value
        self.text = text

    def __repr__(self) -> str:
        return f"Num({self.text})"


class Neg:
    """Unary minus (unary plus is dropped while parsing)."""

    __slots__ = ("value", "operand")

    def __init__(self, operand: Node) -> None:
        self.operand = operand
        self.value = -operand.value

    def __repr__(self) -> str:
        return f"Neg({self.operand!r})"


class BinOp:
    """``left op right`` with ``op`` in ``+ - * /``; ``parenthesized`` if written in (...)."""

    __slots__ = ("value", "op", "left", "right", "parenthesized")

    def __init__(self, op: str, left: Node, right: Node, value: Number) -> None:
        self.op = op
        self.left = left
        self.right = right
        self.value = value
        self.parenthesized = False

    def __repr__(self) -> str:
        return f"BinOp({self.left!r} {self.op} {self.right!r})"


Node = Num | Neg | BinOp


@dataclass(frozen=True)
class ParsedExpression:
    """Result of ``parse_expression``: exact value, the literals in order, and the tree."""

    value: Number
    literals: tuple[Number, ...]
    root: Node


# Whitelist first (one C-level scan), then split into tokens; whitespace between tokens is
# skipped by findall. re.ASCII and explicit classes keep Unicode digits and spaces out.
_INVALID = re.compile(r"[^0-9.+\-*/() \t\r\n]", re.ASCII)
_TOKENS = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]*|[-+*/()]", re.ASCII)
_NUMBER_START = frozenset("0123456789.")
_END = ""  # sentinel token appended after the last one


def _tokenize(text: str, limits: ArithmeticLimits) -> list[str]:
    bad = _INVALID.search(text)
    if bad is not None:
        ch = bad.group()
        raise SafeArithmeticError(
            "invalid_character", f"character {ch!r} (U+{ord(ch):04X}) is not allowed"
        )
    tokens = _TOKENS.findall(text)
    literals = 0
    for tok in tokens:
        if tok[0] not in _NUMBER_START:
            continue
        if tok.endswith("."):
            raise SafeArithmeticError("parse_error", f"number {tok!r} has no digits after '.'")
        if "." in tok and not limits.allow_decimals:
            raise SafeArithmeticError("parse_error", f"decimal literal {tok!r} not allowed")
        if len(tok) - ("." in tok) > limits.max_digits:
            raise SafeArithmeticError(
                "number_too_large", f"a literal has more than {limits.max_digits} digits"
            )
        literals += 1
        if literals > limits.max_literals:
            raise SafeArithmeticError(
                "too_many_numbers", f"more than {limits.max_literals} number literals"
            )
    return tokens


def _literal_value(text: str) -> Number:
    # Only ASCII digits reach here (checked by the tokenizer), so int()/Fraction() cannot
    # be fed Unicode digits, underscores or exponents, and length is bounded by max_digits.
    if "." not in text:
        return int(text)
    whole, frac = text.split(".")
    value = Fraction(int(whole or "0") * 10 ** len(frac) + int(frac), 10 ** len(frac))
    return value.numerator if value.denominator == 1 else value


def _normalize(value: Fraction) -> Number:
    return value.numerator if value.denominator == 1 else value


class _Parser:
    __slots__ = ("tokens", "pos", "limits", "literals")

    def __init__(self, tokens: list[str], limits: ArithmeticLimits) -> None:
        self.tokens = [*tokens, _END]
        self.pos = 0
        self.limits = limits
        self.literals: list[Number] = []

    def _check_size(self, value: Number) -> Number:
        """Bound the value's size, and keep whole numbers as ``int`` (Fraction(2, 1) -> 2)."""
        bits = self.limits.max_bits
        if isinstance(value, int):
            too_big = value.bit_length() > bits
        elif value.denominator == 1:
            value = value.numerator
            too_big = value.bit_length() > bits
        else:
            too_big = value.numerator.bit_length() > bits or value.denominator.bit_length() > bits
        if too_big:
            raise SafeArithmeticError(
                "number_too_large", f"an intermediate value exceeds {bits} bits"
            )
        return value

    def expr(self, depth: int) -> Node:
        node = self.term(depth)
        while (op := self.tokens[self.pos]) in ("+", "-"):
            self.pos += 1
            right = self.term(depth)
            value = node.value + right.value if op == "+" else node.value - right.value
            node = BinOp(op, node, right, self._check_size(value))
        return node

    def term(self, depth: int) -> Node:
        node = self.unary(depth)
        while (op := self.tokens[self.pos]) in ("*", "/"):
            self.pos += 1
            right = self.unary(depth)
            if op == "*":
                value = node.value * right.value
            else:
                if right.value == 0:
                    raise SafeArithmeticError("division_by_zero", "division by zero")
                a, b = node.value, right.value
                if isinstance(a, int) and isinstance(b, int):
                    value = a // b if a % b == 0 else Fraction(a, b)
                else:
                    value = _normalize(Fraction(a) / Fraction(b))
            node = BinOp(op, node, right, self._check_size(value))
        return node

    def unary(self, depth: int) -> Node:
        op = self.tokens[self.pos]
        if op in ("+", "-"):
            if depth >= self.limits.max_depth:
                raise SafeArithmeticError(
                    "too_deep", f"nesting deeper than {self.limits.max_depth}"
                )
            self.pos += 1
            operand = self.unary(depth + 1)
            return Neg(operand) if op == "-" else operand
        return self.atom(depth)

    def atom(self, depth: int) -> Node:
        text = self.tokens[self.pos]
        if text == _END:
            raise SafeArithmeticError("parse_error", "expression ends where a number was expected")
        if text[0] in _NUMBER_START:
            self.pos += 1
            value = _literal_value(text)
            self.literals.append(value)
            return Num(value, text)
        if text == "(":
            if depth >= self.limits.max_depth:
                raise SafeArithmeticError(
                    "too_deep", f"nesting deeper than {self.limits.max_depth}"
                )
            self.pos += 1
            node = self.expr(depth + 1)
            if self.tokens[self.pos] != ")":
                raise SafeArithmeticError("parse_error", "missing ')'")
            self.pos += 1
            if isinstance(node, BinOp):
                node.parenthesized = True
            return node
        raise SafeArithmeticError("parse_error", f"unexpected {text!r} where a number was expected")


def parse_expression(text: str, limits: ArithmeticLimits = DEFAULT_LIMITS) -> ParsedExpression:
    """Parse and exactly evaluate untrusted arithmetic ``text``.

    Cost is O(len(text)) with ``len(text) <= limits.max_chars`` and values bounded by
    ``limits.max_bits``, so any input returns or raises within microseconds to a few
    milliseconds.

    Raises:
        SafeArithmeticError: with ``reason`` in ``REASONS``.
        TypeError: if ``text`` is not a ``str``.
    """
    if not isinstance(text, str):
        raise TypeError(f"expected str, got {type(text).__name__}")
    if len(text) > limits.max_chars:
        raise SafeArithmeticError("too_long", f"{len(text)} characters > {limits.max_chars}")
    tokens = _tokenize(text, limits)
    if not tokens:
        raise SafeArithmeticError("empty", "no expression")
    parser = _Parser(tokens, limits)
    root = parser.expr(0)
    if parser.tokens[parser.pos] != _END:
        raise SafeArithmeticError(
            "parse_error", f"unexpected {parser.tokens[parser.pos]!r} after a complete expression"
        )
    return ParsedExpression(root.value, tuple(parser.literals), root)


def format_number(value: Number) -> str:
    """Canonical text of an exact number: ``28``, ``-3``, ``7/2``."""
    if isinstance(value, Fraction) and value.denominator != 1:
        return f"{value.numerator}/{value.denominator}"
    return str(int(value))
