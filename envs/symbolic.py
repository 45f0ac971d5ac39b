"""Bounded symbolic checks of free-text solution lines, with sympy built from a whitelist parse.

Exact arithmetic (``safe_arithmetic``) reads ``16 - 3 - 4 = 9``. Solution lines also write
equations it cannot read, and this module checks them:

- identities with variables: ``2x + 3x = 5x``, ``Workers: 2(2x) = 4x``;
- equations that follow from earlier ones: ``x + x + 30 = 110`` (fixes ``x = 40``) then
  ``2*x = 80`` and ``x = 40``; ``x = 5`` then ``2x = 10``; ``b = 4s`` and ``b + 16 = 2(s +
  16)`` then ``4s + 16 = 2(s + 16)`` (a linear system, solved exactly);
- units: ``12 customers - 5 customers = 7 customers``, ``$600/month * 12 months/year =
  $7200``, ``5 seconds * 60 potatoes / 60 seconds per minute = 5 minutes``;
- percents: ``50% * 50% = 25%``, ``12/20 x 100% = 60%``;
- implicit multiplication, ``x`` as times and mixed numbers: ``27(1/3) = 9``,
  ``(1/4)24 = 6``, ``40 x .5 = 20``, ``8 x 1 1/2 = 12``;
- chains: ``(L+8) + L = 2L + 8 = 22``.

Safety. A whitelist tokenizer (ASCII digits, ASCII letters, ``+ - * / ^ % ( ) [ ] { }``;
everything else is a break between expressions) and a recursive-descent parser turn model
text into a small syntax tree of tuples; this module then constructs ``sympy.Symbol``,
``Rational``, ``Integer``, ``Add``, ``Mul`` and ``Pow`` itself from that tree. Model text
never reaches ``sympify``, ``parse_expr``, ``eval`` or ``exec``. Every way to make the work
expensive is bounded before sympy runs (``SymbolicLimits``): characters looked at around each
``=``, tokens per side, nesting depth, digits per number, integer exponents only and at most
``max_exponent`` (``x^99999999`` is refused by the parser), distinct symbols per equation,
and a bound on the degree and on the number of terms of the expanded difference ``left -
right``, computed on the tree so that ``(a+b+c)^8`` is refused before ``expand`` could blow
up. Numbers are exact ``Fraction``s with a bit-size cap. A line has a work budget (tokens
read plus tokens parsed, and at most ``max_sympy_calls`` sympy constructions), so a long or
repetitive line costs a bounded amount whatever it holds. Input over a bound is left
"unchecked", never an exception or a hang: the worst input within the bounds takes about
20 ms of sympy per equation (cold cache), hostile input is refused in well under 1 ms.

Reading rules (the writer's intent, as GSM8K solutions write it):

- A single ASCII letter is a variable (``x``, ``B``); case matters. ``x`` between two
  quantities with spaces around it is "times" (``40 x .5``).
- Words of two or more letters right after a quantity are its unit (``12 customers``,
  ``25 total cars``, at most three words), ``/ word`` and ``per word`` divide by a unit. A
  unit is a positive symbol (plural ``s`` dropped), so ``7 customers - 5 customers`` reads as
  ``2 customers``; the number on the right of the last ``=`` may carry one unit word, which
  counts only when the left side has units (``3 * 4 = 12 apples`` compares 12 with 12).
- ``%`` and ``percent`` are read as ``/100`` or, since writers mix both, as a plain unit
  (``45 + 21 + 28 = 94%``); a tight fraction after ``/`` may be one number (``1 1/2 / 1/2 =
  3``), as in ``gsm8k.check_step``. An equation holds if one reading holds.
- ``<<...>>`` calculator annotations are skipped (their own equation is exact arithmetic's).

Verdict of one equation ``left = right`` (``check_equations`` returns the line's: an
``arith_error`` if one is false, else ``ok`` if one holds, else ``unchecked``):

- ``ok``: it holds: an identity (``2x + 3x = 5x``), true once the variables earlier equations
  fixed are substituted, or implied by the earlier equations; a result written with k
  decimals may be rounded to k decimals; with units, true with every unit 1; a running total
  ``7 * 60 = 420 + 23`` (its first operand is the result).
- ``arith_error``: false in every reading: a wrong number; a false identity (``2x + 3x =
  6x``, ``x + 5 = x + 6``); an equation that contradicts the earlier ones (``x = 5`` then
  ``2x = 11``); with units, only when ``left - right`` is a nonzero multiple of a single unit
  monomial, which no unit conversion can reconcile (``12 customers - 5 customers = 8
  customers``, but not ``2 hours + 30 minutes = 150 minutes``). After a contradiction the
  variables involved are forgotten, so that one slip is one flag, not one per later line.
- ``unchecked``: anything else: an equation that only adds information (``x + x + 30 = 110``
  fixes ``x``; ``m = 10h`` relates two unknowns), nonlinear, a conversion without an
  operator (``15 gallons = 120 pints``), a number after a label (``section 2 = x + 200``), a
  side that goes on beyond what is readable, input over a bound. Equations read through
  units or percents (``x + 2x = 3x = 1 hour``) are kept as "soft": they may confirm a later
  equation, never flag one, since a unit conversion may be meant.

The equations established so far are ``Relations`` (an immutable tuple of rows in reduced
row-echelon form), which the caller threads from line to line; ``Let x``/``suppose x``/``x
be``/``x represents`` in a line, or an equation introduced by "if", frees ``x`` again.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from itertools import islice
from typing import Any

__all__ = [
    "Relation",
    "Relations",
    "DEFAULT_SYMBOLIC_LIMITS",
    "SYMBOLIC_REASONS",
    "SymbolicError",
    "SymbolicExpression",
    "SymbolicLimits",
    "check_equations",
    "parse_symbolic",
    "to_sympy",
    "written_value_matches",
]

#: One linear equation a solution established: ``(terms, const, soft)`` meaning
#: ``sum(coeff * variable for variable, coeff in terms) + const == 0``; ``soft`` when it was
#: read through units or percents (it may confirm a later equation, never flag one).
Relation = tuple[tuple[tuple[str, Fraction], ...], Fraction, bool]
#: The equations earlier lines established, in reduced row-echelon form (a row with one
#: variable fixes it), as an immutable tuple so that a tree search can share it.
Relations = tuple[Relation, ...]

#: Reasons a text is refused (``SymbolicError.reason``).
SYMBOLIC_REASONS = (
    "empty",
    "too_long",  # more tokens than max_side_tokens
    "parse_error",  # not an expression of the grammar
    "too_deep",  # parentheses/unary signs nested deeper than max_depth
    "number_too_large",  # a literal with too many digits, or a value too many bits
    "exponent_too_large",  # an exponent that is not an integer literal <= max_exponent
    "too_many_symbols",  # more distinct variables and units than max_symbols
    "too_complex",  # expanded degree or number of terms over max_degree / max_terms
    "division_by_zero",
    "unbound_variable",  # a numeric value was asked of an expression with a free variable
)


class SymbolicError(ValueError):
    """Untrusted text was refused by the symbolic reader; ``reason`` is in ``SYMBOLIC_REASONS``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class SymbolicLimits:
    """Cost bounds of the symbolic reader. All must be positive ints."""

    window_chars: int = 160
    """Characters looked at on each side of an ``=`` (more is not read)."""
    max_side_tokens: int = 48
    """Most tokens in one side of an equation."""
    max_depth: int = 8
    """Deepest nesting of parentheses and unary signs (the parser recurses on these)."""
    max_digits: int = 40
    """Most digits in one number literal."""
    max_bits: int = 1024
    """Largest bit length of the numerator or denominator of an exact value."""
    max_exponent: int = 8
    """Largest exponent after ``^`` (an integer literal)."""
    max_symbols: int = 6
    """Most distinct variables and units in one equation."""
    max_degree: int = 6
    """Largest total degree of ``left - right`` over a common denominator (numerator plus
    denominator), bounded on the tree before sympy expands anything."""
    max_terms: int = 32
    """Most terms of the expanded numerator or denominator of ``left - right`` (a bound
    computed on the tree: ``(a + b)^3`` counts 2^3 = 8)."""
    max_equations: int = 8
    """Most equations judged per line (at most 4x as many ``=`` are looked at); GSM8K's
    gold lines have at most 4."""
    max_relations: int = 8
    """Most equations kept from earlier lines (the oldest are dropped)."""
    max_line_tokens: int = 200
    """Work budget of one line, in tokens: every token read and every token a parse
    attempt consumes counts; the rest of the line is left unchecked when it is spent."""
    max_sympy_calls: int = 4
    """Most sympy constructions (each bounded by max_degree/max_terms) for one line."""

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SymbolicLimits.{name} must be a positive int, got {value!r}")


DEFAULT_SYMBOLIC_LIMITS = SymbolicLimits()

# --- tokens ---------------------------------------------------------------------------------
#
# A token is a tuple (kind, text, gap, start, end): ``gap`` is True when whitespace (or a
# skipped currency sign or annotation) precedes it. Kinds:
#   n number   z unreadable number: a time ("0900"), a truncated decimal ("8.333...")
#   v one-letter variable   w word (unit or prose)   o operator + - * / ^
#   % percent   ( )   c comparison character < > !   b anything else (a break)
# One regular expression decides every kind, so that the Python work per token is a few
# steps (the cost bound of a line is counted in tokens).

_TOKEN = re.compile(
    r"(?P<z>0[0-9]+(?:\.[0-9]+)?|[0-9]+(?:,[0-9]{3})*(?:\.[0-9]+)?(?=\.\.|\u2026))"
    r"|(?P<n>(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?(?![0-9])|\.[0-9]+)"
    # "x" between two quantities, with spaces around it, is "times": "40 x .5", "$1 x 20",
    # "5 seconds x 7 bottles", "12/20 x 100%"; "2x", "1/2 x cases", ".3 x from" are x.
    r"|(?P<times>(?<=[0-9A-Za-z)%] )[xX](?= +\$?[0-9.(]))"
    # "per" divides by a unit ("60 seconds per minute"); "$37 per 10 sandwiches" is prose.
    r"|(?P<per>[Pp]er(?=[ \t]+[A-Za-z]))"
    r"|(?P<pct>%|[Pp]ercents?(?![A-Za-z]))"
    r"|(?P<v>[A-Za-z](?![A-Za-z'\u2019&]))"
    r"|(?P<w>[A-Za-z]+(?:['\u2019&][A-Za-z]+)*)"
    r"|(?P<lp>[(\[{])|(?P<rp>[)\]}])|(?P<o>[-+*/^])|(?P<c>[<>!])"
    r"|(?P<b>[^ \t$\u20ac\u00a3])",
    re.ASCII,
)
_KIND = {
    "z": "z",
    "n": "n",
    "times": "o",
    "per": "o",
    "pct": "%",
    "v": "v",
    "w": "w",
    "lp": "(",
    "rp": ")",
    "o": "o",
    "c": "c",
    "b": "b",
}
_TEXT = {"times": "*", "per": "/", "pct": "%"}
# Same-length replacements, so that positions of "=" stay those of the caller's text.
_NORMALIZE = str.maketrans(
    {
        "\u00d7": "*",  # multiplication sign
        "\u22c5": "*",  # dot operator
        "\u00f7": "/",
        "\u2212": "-",
        "\u2013": "-",
        "\u2014": "-",
        "\u00a0": " ",  # no-break space ("$864\xa0+ $2,592")
        "\u2009": " ",  # thin space
        "\u202f": " ",  # narrow no-break space
    }
)
# GSM8K's calculator annotations "<<48/2=24>>": their "=" is not the line's, and the
# annotation sits between "=" and the number it shows ("= <<24=24>>24").
_ANNOTATION = re.compile(r"<<[^<>\n]{0,200}>>")
# "Let x be", "suppose x", "x represents": x is (re)defined, whatever an earlier line fixed.
_DECLARATION = re.compile(
    r"\b(?:[Ll]et|[Ss]uppose|[Aa]ssume|[Ww]here)\s+([A-Za-z])\b"
    r"|\b([A-Za-z])\s+(?:be|being|represents?|stands?\s+for|denotes?)\b",
    re.ASCII,
)
_EOF = ("e", "", True, -1, -1)

# Words that are not units: a unit phrase neither starts nor ends with one ("30% or x",
# "7 or 8"), and a bare number after one of them is a quantity ("we get 52 = B + 8"),
# where after any other word it is a label ("section 2 = x + 200", "Day 4 = ...").
_PROSE = frozenset(
    """a an and or of to the is are was were be been being so then thus hence therefore
    that this these those which who because since if as at by for from in on into with
    than but not it its we he she they you i his her their our your has have had get gets
    got gives give gave makes make made leaves left means mean equals equal becomes become
    now know knows find finds found total totals all each every only just also about
    over under more less fewer after before when where while there here produces produce per
    yields yield gives giving obtain obtains leaving making having getting shows show
    results result say says said write writes written""".split()
)
# Nouns a number after which is a label, not a quantity: "on day 1 * 2", "Weeks 1-2 = ...".
_LABELS = frozenset(
    """day week month year hour minute second round game level grade step part chapter
    section stage phase page question problem test quiz exam exit gate room floor row
    column lane line hole table shelf bus route plan option box bag house store team
    group class number no""".split()
)
# Units that scale a number, so a value in them is not a value of the left side's unit:
# "5 x 1/2 = 10 halves", "2 dozen * 3 = 72" are not flagged.
_SCALE_WORDS = frozenset(
    """half halve halves third thirds quarter quarters fourth fourths fifth fifths sixth
    sixths eighth eighths tenth tenths dozen dozens score hundred hundreds thousand
    thousands million millions billion billions pair pairs couple couples time times""".split()
)


class _Budget:
    """The work one line may still cost: tokens read and parsed, sympy calls."""

    __slots__ = ("tokens", "sympy")

    def __init__(self, limits: SymbolicLimits) -> None:
        self.tokens = limits.max_line_tokens
        self.sympy = limits.max_sympy_calls

    def spend(self, tokens: int) -> None:
        self.tokens -= tokens
        if self.tokens < 0:
            raise _Reject("too_complex", "the line's work budget is spent")


def _tokenize(text: str, offset: int, budget: _Budget, cap: int) -> list[tuple]:
    """At most ``cap`` tokens of ``text`` (a window of the line starting at ``offset``)."""
    out = []
    end = 0
    for m in islice(_TOKEN.finditer(text), max(0, min(cap, budget.tokens + 1))):
        group = m.lastgroup
        start, stop = m.span()
        text_ = _TEXT.get(group) or m.group()
        out.append((_KIND[group], text_, start != end, offset + start, offset + stop))
        end = stop
    budget.spend(len(out))
    return out


# --- syntax tree ----------------------------------------------------------------------------
#
# Nodes are tuples: ("num", Fraction, text), ("var", name), ("unit", name), ("pct", node),
# ("neg", node), (op, left, right) with op in "+-*/", ("^", base, int exponent).


class _Reject(Exception):
    """Internal: the parse or a bound failed; becomes SymbolicError or "unchecked"."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.message = message or reason


def _literal(text: str) -> Fraction:
    text = text.replace(",", "")
    if "." not in text:
        return Fraction(int(text))
    whole, frac = text.split(".")
    return Fraction(int(whole or "0") * 10 ** len(frac) + int(frac), 10 ** len(frac))


def _unit_name(words: list[str]) -> str:
    # One symbol per phrase; a plural "s" dropped so "months" cancels "month".
    last = words[-1]
    if len(last) > 3 and last.endswith("s") and not last.endswith("ss"):
        words[-1] = last[:-1]
    return " ".join(words)


class _Parser:
    """Recursive descent over a token list. It stops at the first token that cannot go on
    with the expression; the caller decides whether the tokens left over are allowed
    (a whole side must use them all, the side after ``=`` may be followed by prose).

    Grammar (left-associative, usual precedence; implicit multiplication is a ``*``)::

        expr    := term (("+" | "-") term)*
        term    := unary (("*" | "/") (unary | units) | <implicit> power)*
        unary   := ("+" | "-") unary | power
        power   := postfix ("^" INTEGER)?
        postfix := atom "%"? units?            units only after a number, ")" or "%"
        atom    := NUMBER | MIXED | VARIABLE | "(" expr ")"
        units   := WORD{1..unit_words}
    """

    __slots__ = (
        "toks",
        "n",
        "pos",
        "limits",
        "unit_words",
        "grouped",
        "depth",
        "last",
        "vars",
        "units",
        "has_op",
        "has_pct",
        "ended",
        "after_slash",
    )

    def __init__(
        self, toks: list[tuple], limits: SymbolicLimits, unit_words: int, grouped: bool
    ) -> None:
        self.toks = toks
        self.n = len(toks)
        self.pos = 0
        self.limits = limits
        self.unit_words = unit_words
        self.grouped = grouped
        self.depth = 0
        self.last = ""
        self.vars: set[str] = set()
        self.units: set[str] = set()
        self.has_op = False
        self.has_pct = False
        self.ended = False
        self.after_slash = False

    def peek(self, ahead: int = 0) -> tuple:
        i = self.pos + ahead
        return self.toks[i] if i < self.n else _EOF

    def enter(self) -> None:
        self.depth += 1
        if self.depth > self.limits.max_depth:
            raise _Reject("too_deep", f"nesting deeper than {self.limits.max_depth}")

    def expr(self) -> tuple:
        node = self.term()
        while not self.ended:
            tok = self.peek()
            if tok[0] != "o" or tok[1] not in "+-":
                return node
            self.pos += 1
            self.has_op = True
            node = (tok[1], node, self.term())
        return node

    def term(self) -> tuple:
        node = self.unary()
        while True:
            tok = self.peek()
            kind = tok[0]
            if self.ended:
                # After a result's unit only its denominator: "= 60 miles/day".
                if kind == "o" and tok[1] == "/" and self.peek(1)[0] == "w":
                    self.pos += 1
                    node = ("/", node, self.unit_phrase())
                    continue
                return node
            if kind == "o" and tok[1] in "*/":
                self.pos += 1
                self.has_op = True
                if tok[1] == "/" and self.peek()[0] == "w":  # "600/month", "60 seconds per minute"
                    node = ("/", node, self.unit_phrase())
                else:
                    self.after_slash = tok[1] == "/"
                    node = (tok[1], node, self.unary())
            elif (
                # 2x, (1/2)x, "1/2 x cases"; not "6 a day", "3 I have" (words, not x)
                (kind == "v" and self.last in ("n", ")") and not (tok[2] and tok[1] in "aI"))
                or (
                    kind == "("
                    # "2(40+9)", "1/2 (68)"; after a result, "= 4 (15 minutes)" is an aside
                    and (
                        (self.last == "n" and not (tok[2] and self.unit_words == 1))
                        or self.last == ")"
                        or (self.last == "v" and not tok[2])
                    )
                )
                or (kind == "n" and self.last == ")")  # (1/4)24, (1/2) 278
            ):
                self.has_op = True
                node = ("*", node, self.power())
            else:
                return node

    def unary(self) -> tuple:
        tok = self.peek()
        if tok[0] == "o" and tok[1] in "+-":
            self.enter()
            self.pos += 1
            operand = self.unary()
            self.depth -= 1
            return ("neg", operand) if tok[1] == "-" else operand
        return self.power()

    def power(self) -> tuple:
        base = self.postfix()
        tok = self.peek()
        if tok[0] != "o" or tok[1] != "^":
            return base
        self.pos += 1
        exp = self.peek()
        if exp[0] != "n" or not exp[1].isdigit():
            raise _Reject("exponent_too_large", "an exponent must be an integer literal")
        if len(exp[1]) > 3 or int(exp[1]) > self.limits.max_exponent:
            raise _Reject(
                "exponent_too_large", f"exponent {exp[1][:12]} > {self.limits.max_exponent}"
            )
        self.pos += 1
        self.last = "n"
        self.has_op = True
        return ("^", base, int(exp[1]))

    def postfix(self) -> tuple:
        node = self.atom()
        if self.peek()[0] == "%":
            self.pos += 1
            self.last = "%"
            self.has_pct = True
            node = ("pct", node)
        tok = self.peek()
        if tok[0] == "w" and self.last in ("n", ")", "%") and tok[1].lower() not in _PROSE:
            node = ("*", node, self.unit_phrase())
        return node

    def unit_phrase(self) -> tuple:
        words = []
        while self.peek()[0] == "w" and len(words) < self.unit_words:
            words.append(self.peek()[1].lower())
            self.pos += 1
        while words and words[-1] in _PROSE:  # "5 cars that": the unit is "cars"
            words.pop()
            self.pos -= 1
        if not words or words[0] in _PROSE:
            raise _Reject("parse_error", "a unit was expected")
        self.last = "w"
        if self.unit_words == 1:
            self.ended = True  # "= 9 because - 18/-2": after a result's unit, prose
        name = _unit_name(words)
        self.units.add(name)
        return ("unit", name)

    def atom(self) -> tuple:
        tok = self.peek()
        kind = tok[0]
        if kind == "n":
            if len(tok[1]) > self.limits.max_digits:
                raise _Reject("number_too_large", f"more than {self.limits.max_digits} digits")
            self.pos += 1
            self.last = "n"
            after_slash, self.after_slash = self.after_slash, False
            value = _literal(tok[1])
            nxt, slash, den = self.peek(), self.peek(1), self.peek(2)
            if (  # a mixed number "3 1/2": integer, space, proper fraction written tight
                tok[1].isdigit()
                and nxt[0] == "n"
                and nxt[2]
                and nxt[1].isdigit()
                and slash[0] == "o"
                and slash[1] == "/"
                and not slash[2]
                and den[0] == "n"
                and not den[2]
                and den[1].isdigit()
                and 0 < int(nxt[1]) < int(den[1])
            ):
                self.pos += 3
                value += Fraction(int(nxt[1]), int(den[1]))
                return ("num", value, f"{tok[1]} {nxt[1]}/{den[1]}")
            if self.grouped and nxt[0] == "o" and nxt[1] == "/":
                # "25 / 1/3", "14 / 1 / 4": the fraction after "/" as one number; written
                # tight, anywhere ("1/2^2"), else only right after "/".
                if slash[0] == "n" and ((not nxt[2] and not slash[2]) or after_slash):
                    divisor = _literal(slash[1])
                    if divisor == 0:
                        raise _Reject("division_by_zero", "division by zero")
                    self.pos += 2
                    return ("num", value / divisor, f"{tok[1]}/{slash[1]}")
            return ("num", value, tok[1])
        if kind == "v":
            self.pos += 1
            self.last = "v"
            self.vars.add(tok[1])
            return ("var", tok[1])
        if kind == "(":
            self.enter()
            self.pos += 1
            node = self.expr()
            if self.peek()[0] != ")":
                raise _Reject("parse_error", "missing ')'")
            self.pos += 1
            self.depth -= 1
            self.last = ")"
            return node
        raise _Reject("parse_error", f"unexpected {tok[1]!r} where a value was expected")


# --- one side of an equation ------------------------------------------------------------


class SymbolicExpression:
    """One parsed side: its readings (trees), variables, units and written text.

    ``nodes`` holds the precedence reading first and, when a fraction follows ``/``, the
    grouped reading (``25 / 1/3`` as ``25 / (1/3)``, ``14 / 1 / 4`` as ``14 / (1/4)``) second.
    """

    __slots__ = ("nodes", "vars", "units", "has_op", "has_pct", "text", "number_text")

    def __init__(
        self,
        nodes: tuple[tuple, ...],
        parser: _Parser,
        text: str,
    ) -> None:
        self.nodes = nodes
        self.vars = frozenset(parser.vars)
        self.units = frozenset(parser.units)
        self.has_op = parser.has_op
        self.has_pct = parser.has_pct
        self.text = text
        self.number_text = _number_text(nodes[0])

    def __repr__(self) -> str:
        return f"SymbolicExpression({self.text!r})"


def _number_text(node: tuple) -> str:
    """The written number of a side that is one number (for the rounding tolerance)."""
    while True:
        tag = node[0]
        if tag == "num":
            return node[2]
        if tag in ("pct", "neg"):
            node = node[1]
        elif tag == "*" and node[2][0] == "unit":
            node = node[1]
        else:
            return ""


def _ambiguous(toks: list[tuple]) -> bool:
    """A fraction right after "/" ("25 / 1/3", "14 / 1 / 4"): the readings differ."""
    for i in range(len(toks) - 3):
        if (
            toks[i][0] == "o"
            and toks[i][1] == "/"
            and toks[i + 1][0] == "n"
            and toks[i + 2][0] == "o"
            and toks[i + 2][1] == "/"
            and toks[i + 3][0] == "n"
        ):
            return True
    return False


def _parse_tokens(
    toks: list[tuple],
    line: str,
    limits: SymbolicLimits,
    budget: _Budget,
    unit_words: int,
    whole: bool,
) -> tuple[SymbolicExpression, int]:
    """Parse ``toks`` (all of them if ``whole``, else the longest prefix): the side and the
    number of tokens used. Raises ``_Reject``."""
    if not toks:
        raise _Reject("empty", "no expression")
    if len(toks) > limits.max_side_tokens + 2:
        raise _Reject("too_long", f"more than {limits.max_side_tokens} tokens")
    parser = _Parser(toks, limits, unit_words, grouped=False)
    try:
        node = parser.expr()
    finally:
        budget.spend(parser.pos + 1)  # what the attempt read, failed or not
    used = parser.pos
    if whole and used != len(toks):
        raise _Reject("parse_error", f"unexpected {toks[used][1]!r}")
    if used > limits.max_side_tokens:
        raise _Reject("too_long", f"more than {limits.max_side_tokens} tokens")
    nodes: tuple[tuple, ...] = (node,)
    if _ambiguous(toks[:used]):
        budget.spend(used)
        other = _Parser(toks[:used], limits, unit_words, grouped=True)
        try:
            alt = other.expr()
            if other.pos == used:
                nodes = (node, alt)
        except _Reject:
            pass
    text = line[toks[0][3] : toks[used - 1][4]]
    return SymbolicExpression(nodes, parser, text), used


def parse_symbolic(
    text: str, limits: SymbolicLimits = DEFAULT_SYMBOLIC_LIMITS
) -> SymbolicExpression:
    """Parse untrusted ``text`` as one expression of the symbolic grammar (see the module
    docstring): numbers, one-letter variables, unit words, ``%``, ``+ - * / ^`` and
    implicit multiplication. Nothing is evaluated.

    Raises:
        SymbolicError: with ``reason`` in ``SYMBOLIC_REASONS``.
        TypeError: if ``text`` is not a ``str``.
    """
    if not isinstance(text, str):
        raise TypeError(f"expected str, got {type(text).__name__}")
    if len(text) > limits.window_chars:
        raise SymbolicError("too_long", f"{len(text)} characters > {limits.window_chars}")
    line = text.translate(_NORMALIZE)
    budget = _Budget(limits)
    try:
        toks = _tokenize(line, 0, budget, limits.max_side_tokens + 1)
        if len(toks) > limits.max_side_tokens:
            raise _Reject("too_long", f"more than {limits.max_side_tokens} tokens")
        return _parse_tokens(toks, line, limits, budget, unit_words=3, whole=True)[0]
    except _Reject as exc:
        raise SymbolicError(exc.reason, exc.message) from None
    except RecursionError:  # cannot happen within max_depth; belt and braces
        raise SymbolicError("too_deep", "nesting too deep") from None


# --- exact numeric values -----------------------------------------------------------------


def _check_bits(value: Fraction, limits: SymbolicLimits) -> Fraction:
    bits = limits.max_bits
    if value.numerator.bit_length() > bits or value.denominator.bit_length() > bits:
        raise _Reject("number_too_large", f"a value exceeds {bits} bits")
    return value


def _value(node: tuple, pct: Fraction, values: dict[str, Fraction], limits) -> Fraction:
    """Exact value with every unit 1 and ``%`` as ``pct``; variables from ``values``."""
    tag = node[0]
    if tag == "num":
        return node[1]
    if tag == "var":
        if node[1] not in values:
            raise _Reject("unbound_variable", f"{node[1]} has no value")
        return values[node[1]]
    if tag == "unit":
        return Fraction(1)
    if tag == "pct":
        return _value(node[1], pct, values, limits) * pct
    if tag == "neg":
        return -_value(node[1], pct, values, limits)
    if tag == "^":
        base = _value(node[1], pct, values, limits)
        size = max(base.numerator.bit_length(), base.denominator.bit_length())
        if size * node[2] > limits.max_bits:  # refuse before computing the power
            raise _Reject("number_too_large", f"a value exceeds {limits.max_bits} bits")
        return base ** node[2]
    a = _value(node[1], pct, values, limits)
    b = _value(node[2], pct, values, limits)
    if tag == "+":
        return _check_bits(a + b, limits)
    if tag == "-":
        return _check_bits(a - b, limits)
    if tag == "*":
        return _check_bits(a * b, limits)
    if b == 0:
        raise _Reject("division_by_zero", "division by zero")
    return _check_bits(a / b, limits)


# --- sympy, built from the tree ---------------------------------------------------------

_BIG = 1 << 40  # cap for the bound arithmetic (keeps the bounds themselves small ints)


def _bound(node: tuple, fixed: dict[str, Any], units: bool) -> tuple[int, int, int, int]:
    """Upper bounds (numerator degree, denominator degree, numerator terms, denominator
    terms) of ``node`` over a common denominator, expanded; ``fixed`` variables and (if not
    ``units``) units are constants."""
    tag = node[0]
    if tag == "num":
        return 0, 0, 1, 1
    if tag == "var":
        return (0, 0, 1, 1) if node[1] in fixed else (1, 0, 1, 1)
    if tag == "unit":
        return (1, 0, 1, 1) if units else (0, 0, 1, 1)
    if tag in ("pct", "neg"):
        return _bound(node[1], fixed, units)
    if tag == "^":
        nd, dd, nt, dt = _bound(node[1], fixed, units)
        k = node[2]
        return nd * k, dd * k, min(nt**k, _BIG), min(dt**k, _BIG)
    an, ad, at, adt = _bound(node[1], fixed, units)
    bn, bd, bt, bdt = _bound(node[2], fixed, units)
    if tag in ("+", "-"):
        return max(an + bd, bn + ad), ad + bd, min(at * bdt + bt * adt, _BIG), min(adt * bdt, _BIG)
    if tag == "*":
        return an + bn, ad + bd, min(at * bt, _BIG), min(adt * bdt, _BIG)
    return an + bd, ad + bn, min(at * bdt, _BIG), min(adt * bt, _BIG)


def _sympy_module():
    # Imported on first use: most steps never need it, and it costs ~0.3 s to import.
    import sympy

    return sympy


def _build(node: tuple, sp, pct, fixed: dict[str, Any], symbols: dict[str, Any], units: bool):
    tag = node[0]
    if tag == "num":
        return sp.Rational(node[1].numerator, node[1].denominator)
    if tag == "var":
        name = node[1]
        if name in fixed:
            value = fixed[name]
            return sp.Rational(value.numerator, value.denominator)
        if name not in symbols:
            symbols[name] = sp.Symbol(name)
        return symbols[name]
    if tag == "unit":
        if not units:
            return sp.Integer(1)
        key = "unit:" + node[1]
        if key not in symbols:
            symbols[key] = sp.Symbol(node[1], positive=True)
        return symbols[key]
    if tag == "pct":
        return sp.Mul(_build(node[1], sp, pct, fixed, symbols, units), pct)
    if tag == "neg":
        return sp.Mul(sp.Integer(-1), _build(node[1], sp, pct, fixed, symbols, units))
    if tag == "^":
        base = _build(node[1], sp, pct, fixed, symbols, units)
        if node[2] == 0 and base == 0:
            raise _Reject("division_by_zero", "0^0")
        return sp.Pow(base, sp.Integer(node[2]))
    a = _build(node[1], sp, pct, fixed, symbols, units)
    b = _build(node[2], sp, pct, fixed, symbols, units)
    if tag == "+":
        return sp.Add(a, b)
    if tag == "-":
        return sp.Add(a, sp.Mul(sp.Integer(-1), b))
    if tag == "*":
        return sp.Mul(a, b)
    if b == 0:
        raise _Reject("division_by_zero", "division by zero")
    return sp.Mul(a, sp.Pow(b, sp.Integer(-1)))


def _difference(
    left: tuple,
    right: tuple,
    values: dict[str, Fraction],
    limits: SymbolicLimits,
    budget: _Budget,
    *,
    units: bool,
    pct: Fraction = Fraction(1, 100),
    right_units: bool | None = None,
) -> tuple[Any, Any, dict[str, Any]]:
    """``left - right`` as (expanded numerator, denominator, symbols), refused over a bound."""
    right_units = units if right_units is None else right_units
    ln, ld, lt, ldt = _bound(left, values, units)
    rn, rd, rt, rdt = _bound(right, values, right_units)
    num_deg, den_deg = max(ln + rd, rn + ld), ld + rd
    num_terms, den_terms = lt * rdt + rt * ldt, ldt * rdt
    if num_deg + den_deg > limits.max_degree:
        raise _Reject("too_complex", f"degree {num_deg + den_deg} > {limits.max_degree}")
    if num_terms > limits.max_terms or den_terms > limits.max_terms:
        raise _Reject("too_complex", f"more than {limits.max_terms} terms")
    budget.sympy -= 1
    if budget.sympy < 0:
        raise _Reject("too_complex", "the line's sympy budget is spent")
    sp = _sympy_module()
    symbols: dict[str, Any] = {}
    fraction = sp.Rational(pct.numerator, pct.denominator)
    a = _build(left, sp, fraction, values, symbols, units)
    b = _build(right, sp, fraction, values, symbols, right_units)
    num, den = sp.fraction(sp.together(sp.Add(a, sp.Mul(sp.Integer(-1), b))))
    return sp.expand(num), den, symbols


def to_sympy(
    expression: SymbolicExpression,
    values: dict[str, Fraction] | None = None,
    limits: SymbolicLimits = DEFAULT_SYMBOLIC_LIMITS,
):
    """The sympy expression of a parsed side (precedence reading, ``%`` as ``/100``, each
    unit a positive symbol, ``values`` substituted), built node by node from the tree.

    Raises ``SymbolicError`` (``too_complex``, ``too_many_symbols``, ``division_by_zero``)
    before sympy does any expensive work."""
    values = dict(values or {})
    node = expression.nodes[0]
    if len((expression.vars - values.keys()) | expression.units) > limits.max_symbols:
        raise SymbolicError("too_many_symbols", f"more than {limits.max_symbols} symbols")
    try:
        nd, dd, nt, dt = _bound(node, values, True)
        if nd + dd > limits.max_degree or nt > limits.max_terms or dt > limits.max_terms:
            raise _Reject("too_complex", "over the degree or term bound")
        sp = _sympy_module()
        return _build(node, sp, sp.Rational(1, 100), values, {}, True)
    except _Reject as exc:
        raise SymbolicError(exc.reason, exc.message) from None


# --- judging one equation --------------------------------------------------------------


def written_value_matches(exact: Fraction | int, written: Fraction | int, text: str) -> bool:
    """``written`` (as the writer wrote it, ``text``) equals ``exact``, or is ``exact``
    rounded to the decimals written (``10 / 3 = 3.33``)."""
    if exact == written:
        return True
    if "." in text:
        decimals = len(text.rsplit(".", 1)[1])
        return abs(Fraction(exact) - Fraction(written)) <= Fraction(1, 2 * 10**decimals)
    return False


def _format(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    return f"{value.numerator}/{value.denominator}"


def _with(values: dict[str, Fraction], names: Iterable[str]) -> str:
    used = sorted(n for n in names if n in values)
    return ", ".join(f"{n} = {_format(values[n])}" for n in used)


def _is_monomial(expr: Any) -> bool:
    return not expr.is_Add


def _leading(node: tuple) -> tuple | None:
    """The first operand of a compound side (``420`` of ``420 seconds + 23 seconds``)."""
    if node[0] not in ("+", "-", "*", "/"):
        return None
    while node[0] in ("+", "-", "*", "/"):
        node = node[1]
    return node


def _scaled(units: Iterable[str]) -> bool:
    return any(word in _SCALE_WORDS for unit in units for word in unit.split())


def _subtract_multiple(
    terms: dict[str, Fraction], other: dict[str, Fraction], factor: Fraction
) -> None:
    """``terms -= factor * other`` in place, dropping the names whose coefficient becomes 0."""
    for name, coeff in other.items():
        value = terms.get(name, 0) - factor * coeff
        if value:
            terms[name] = value
        else:
            terms.pop(name, None)


class _System:
    """The linear equations a solution has established so far, in reduced row-echelon form:
    each row ``(terms, const, soft)`` says ``sum(coeff * variable) + const == 0`` with its
    pivot (first variable by name) at coefficient 1 and in no other row; a row with one
    variable fixes it. ``soft`` rows were read through units or percents: they may confirm
    a later equation, never make one false."""

    __slots__ = ("rows", "limits")

    def __init__(self, relations: Relations, limits: SymbolicLimits) -> None:
        self.rows = [(dict(terms), const, soft) for terms, const, soft in relations]
        self.limits = limits

    def values(self) -> dict[str, Fraction]:
        return {next(iter(t)): -c for t, c, _ in self.rows if len(t) == 1}

    def soft_names(self) -> set[str]:
        return {name for t, _, soft in self.rows if soft for name in t}

    def forget(self, names: Iterable[str]) -> None:
        names = set(names)
        self.rows = [row for row in self.rows if not names.intersection(row[0])]

    def reduce(
        self, terms: dict[str, Fraction], const: Fraction
    ) -> tuple[dict[str, Fraction], Fraction, bool]:
        """``terms + const`` minus the multiples of the rows that remove their pivots."""
        terms = dict(terms)
        soft = False
        for row_terms, row_const, row_soft in self.rows:
            factor = terms.get(min(row_terms))
            if factor:
                _subtract_multiple(terms, row_terms, factor)
                const -= factor * row_const
                soft = soft or row_soft
        return terms, const, soft

    def add(self, terms: dict[str, Fraction], const: Fraction, soft: bool) -> None:
        """Add a reduced equation (no pivot of a row in it) as a new row."""
        pivot = min(terms)
        scale = terms[pivot]
        terms = {name: coeff / scale for name, coeff in terms.items()}
        const = const / scale
        try:
            for value in (const, *terms.values()):
                _check_bits(value, self.limits)
        except _Reject:
            return  # too large to keep: the system just knows less
        rows = []
        for row_terms, row_const, row_soft in self.rows:
            factor = row_terms.get(pivot)
            if factor:
                row_terms = dict(row_terms)
                _subtract_multiple(row_terms, terms, factor)
                row_const = row_const - factor * const
                row_soft = row_soft or soft
                if not row_terms:
                    continue
            rows.append((row_terms, row_const, row_soft))
        rows.append((terms, const, soft))
        self.rows = rows[-self.limits.max_relations :]

    def freeze(self) -> Relations:
        return tuple(sorted((tuple(sorted(t.items())), c, soft) for t, c, soft in self.rows))


def _linear(
    num: Any, den: Any, syms: dict[str, Any], free: Iterable[str]
) -> tuple[dict[str, Fraction], Fraction] | None:
    """``num == 0`` as ``(terms, const)`` when linear in the free variables (and, over a
    variable denominator, with one variable whose root does not zero it), else None."""
    sp = _sympy_module()
    names = sorted(name for name in free if name in syms)
    if not names:
        return ({}, Fraction(int(num.p), int(num.q))) if num.is_Rational else None
    gens = [syms[name] for name in names]
    poly = sp.Poly(num, *gens)
    if poly.total_degree() > 1 or not all(c.is_Rational for c in poly.coeffs()):
        return None
    const = poly.coeff_monomial(1)
    terms = {}
    for name, gen in zip(names, gens, strict=True):
        coeff = poly.coeff_monomial(gen)
        if coeff != 0:
            terms[name] = Fraction(int(coeff.p), int(coeff.q))
    if not den.is_number:
        if len(terms) != 1:
            return None
        (name,) = terms
        root = -const / poly.coeff_monomial(syms[name])
        if den.subs(syms[name], root) == 0:
            return None
    return terms, Fraction(int(const.p), int(const.q))


def _judge(
    left: SymbolicExpression,
    right: SymbolicExpression,
    system: _System,
    limits: SymbolicLimits,
    budget: _Budget,
) -> tuple[str, str]:
    """Verdict of ``left = right``; may add an equation to ``system``. ``("", "")`` when the
    pair is not an equation to judge (no variable and no operator on the left)."""
    names = left.vars | right.vars
    if not names and not left.has_op:
        return "", ""  # "15 gallons = 120 pints", "48 = 100% + 20%": a statement, not a sum
    has_units = bool(left.units)
    any_units = has_units or bool(right.units)
    has_pct = left.has_pct or right.has_pct
    # A unit word after the result counts only against a left side with units.
    right_units = has_units
    symbols = names | left.units | (right.units if has_units else frozenset())
    if len(symbols) > limits.max_symbols:
        return "unchecked", ""
    pcts = (Fraction(1, 100), Fraction(1)) if has_pct else (Fraction(1, 100),)
    values = system.values()
    free = names - values.keys()

    if not free:
        exact = None
        for ln in left.nodes:
            for rn in right.nodes:
                for pct in pcts:
                    try:
                        lv = _value(ln, pct, values, limits)
                        rv = _value(rn, pct, values, limits)
                    except _Reject:
                        continue
                    if written_value_matches(lv, rv, right.number_text):
                        return "ok", ""
                    lead = _leading(rn)
                    # A running total, "7 * 60 = 420 + 23 = 443": the result goes on (what
                    # exact arithmetic skips as a side that continues).
                    if lead is not None and _value(lead, pct, values, limits) == lv:
                        return "ok", ""
                    if exact is None:
                        exact = lv
        if exact is None or _scaled(left.units | right.units):
            return "unchecked", ""
        soft = names & system.soft_names()
        if names and (any_units or soft):
            # "x = 120 minutes" after "x = 2", "x = 20" after "3x = 1 hour": a conversion may
            # be meant. A soft value that does not fit is dropped, to be fixed afresh.
            system.forget(soft)
            return "unchecked", ""
        given = _with(values, names)
        detail = f"{left.text} = {_format(exact)}, not {right.text}"
        detail += f" (with {given})" if given else ""
        if has_units:
            # With units, only a difference no unit conversion can explain: k * (one unit
            # monomial), as in "12 customers - 5 customers = 8 customers".
            num, den, _ = _difference(
                left.nodes[0],
                right.nodes[0],
                values,
                limits,
                budget,
                units=True,
                right_units=right_units,
            )
            if num == 0 or not _is_monomial(num) or not _is_monomial(_sympy_module().expand(den)):
                return "unchecked", ""
        # The solution changed its mind ("4c = 150" after c = 35): flagged once; which of
        # the two was wrong is unknown, so both are dropped and the next equation fixes
        # the variables afresh (one typo is one flag, not one per later line).
        system.forget(names)
        return "arith_error", detail

    # Free variables: an identity, else a linear equation checked against the system.
    num, den, syms = _difference(
        left.nodes[0], right.nodes[0], values, limits, budget, units=True, right_units=right_units
    )
    if num == 0:
        return "ok", ""
    if any_units:  # the equations themselves are read with every unit 1
        num, den, syms = _difference(
            left.nodes[0], right.nodes[0], values, limits, budget, units=False
        )
        if num == 0:
            return "ok", ""
    tainted = any_units or has_pct
    form = _linear(num, den, syms, free)
    if form is None:
        return "unchecked", ""
    terms, const = form
    if not terms:  # "x + 5 = x + 6": false whatever x is
        if tainted:
            return "unchecked", ""
        return "arith_error", f"{left.text} = {right.text} is false for every {min(free)}"
    if (
        len(terms) == 1
        and const == 0
        and not tainted
        and den.is_number
        and left.has_op
        and terms.keys() <= left.vars & right.vars
    ):
        # "2x + 3x = 6x": meant as an identity (a word problem's unknown is not 0).
        return "arith_error", f"{left.text} = {right.text} is not an identity"
    reduced, rest, soft = system.reduce(terms, const)
    if reduced:
        system.add(reduced, rest, tainted or soft)  # new information: fixes or relates
        return "unchecked", ""
    if rest == 0:
        return "ok", ""  # implied by the earlier equations
    if tainted or soft:
        system.forget(terms.keys() & system.soft_names())
        return "unchecked", ""
    # A contradiction with earlier equations: flagged once, then forgotten, as above.
    system.forget(terms)
    return "arith_error", f"{left.text} = {right.text} contradicts the earlier equations"


# --- finding the equations of a line --------------------------------------------------------


def _is_unit_word(toks: list[tuple], j: int) -> bool:
    """``toks[j]`` (a word) belongs to a quantity: within 3 words after a number, ")", "%"
    or "/" ("12 customers", "25 total cars", "/month", "per minute", "8 slices of pizza")."""
    for i in range(j - 1, max(j - 4, -1), -1):
        kind = toks[i][0]
        if kind == "w":
            continue
        return kind in ("n", ")", "%") or (kind == "o" and toks[i][1] == "/")
    return False


_STARTS = frozenset("nv(")


def _left_side(
    toks: list[tuple], line: str, limits: SymbolicLimits, budget: _Budget
) -> tuple[SymbolicExpression | None, int]:
    """The expression that ends right before an ``=`` (the longest readable suffix of
    ``toks``) and its first token's index; None when there is none or it visibly continues
    to the left."""
    i = len(toks)
    stop = max(0, i - limits.max_side_tokens)
    while i > stop:
        kind = toks[i - 1][0]
        if kind in ("n", "v", "o", "%", "(", ")") or (kind == "w" and _is_unit_word(toks, i - 1)):
            i -= 1
        else:
            break
    if i == stop and stop > 0:
        return None, 0  # longer than max_side_tokens: refused before any parse
    start = i
    for _ in range(4):
        while start < len(toks) and not (
            toks[start][0] in _STARTS or (toks[start][0] == "o" and toks[start][1] in "+-")
        ):
            start += 1
        if start >= len(toks):
            return None, 0
        try:
            side, _ = _parse_tokens(toks[start:], line, limits, budget, unit_words=3, whole=True)
        except _Reject:
            if budget.tokens < 0:
                raise
            start += 1
            continue
        return (side if _starts_clear(toks, start, side) else None), start
    return None, 0


_HYPOTHETICAL = frozenset(("if", "when", "suppose", "assume", "assuming", "let", "say"))


def _hypothetical(toks: list[tuple], start: int) -> bool:
    """ "if 100 + 100x = 120 then x = .2": the equation (re)defines its variables."""
    return any(
        tok[0] == "w" and tok[1].lower() in _HYPOTHETICAL for tok in toks[max(0, start - 3) : start]
    )


def _starts_clear(toks: list[tuple], start: int, side: SymbolicExpression) -> bool:
    """Nothing right before ``toks[start]`` says that the expression began earlier."""
    if start == 0:
        return True
    before = toks[start - 1]
    kind = before[0]
    prev = toks[start - 2] if start >= 2 else None
    if kind == "w":
        if before[1].lower() not in _PROSE and prev is not None and prev[0] in ("n", ")", "%"):
            return False  # "1 hour 20 minutes = ...": a quantity goes on to the left
        if toks[start][0] == "o":
            return False  # "bikes + 12 - 18 = 45": the first operand is a word
        word = before[1].lower()
        if side.nodes[0][0] == "num":  # "section 2 = x + 200" is a label, "get 52 = ..." not
            return word in _PROSE
        if toks[start][0] == "n" and word not in _PROSE:
            # "on day 1 * 2 = 20", "Weeks 1-2 = 96 - 70": the number labels the word.
            return not (word.rstrip("s") in _LABELS or word in _LABELS or before[1][0].isupper())
        return True
    if kind == "b":
        # "+ . 84 + .82", "14, 400 / 80", "13,2000 / 60": the break is inside a number or
        # an expression, not before one.
        return prev is None or not (prev[0] == "o" or (before[1] == "," and prev[0] == "n"))
    if kind == "(":  # an unmatched "(" as in "(so 3 * 4 = 12)", but not "100+(100*(10/100)"
        return prev is None or prev[0] in ("b", "w")
    # A number, an operator, a variable, ")" or "%": "Jerry's Age/2", "13:00-11:00".
    return False


def _right_side(
    toks: list[tuple], line: str, limits: SymbolicLimits, budget: _Budget, truncated: bool
) -> SymbolicExpression | None:
    """The expression that starts right after an ``=`` (the longest readable prefix, at
    most one unit word after it), or None when it goes on beyond what is readable."""
    if not toks:
        return None
    try:
        side, used = _parse_tokens(toks, line, limits, budget, unit_words=1, whole=False)
    except _Reject:
        if budget.tokens < 0:
            raise
        return None
    if used < len(toks):
        kind = toks[used][0]
        if kind in ("n", "z", "o", "%") or (kind == "(" and not toks[used][2]):
            return None  # "= 14 / 2", "= 12 000", "= 1.5.3", "= 3(": the side goes on
    elif truncated:
        return None
    return side


class _Segment:
    """The text between two ``=`` (or the line's ends), tokenized on demand: ``head`` (the
    first tokens, for a right side), ``tail`` (the last ``window_chars``, for a left side)
    and ``whole`` (all of it as one expression, when it is one: a link of a chain)."""

    __slots__ = ("line", "a", "b", "limits", "budget", "interior", "_head", "_tail", "_whole")

    def __init__(
        self, line: str, a: int, b: int, limits: SymbolicLimits, budget: _Budget, interior: bool
    ) -> None:
        self.line, self.a, self.b = line, a, b
        self.limits, self.budget, self.interior = limits, budget, interior
        self._head: list[tuple] | None = None
        self._tail: list[tuple] | None = None
        self._whole: SymbolicExpression | None | bool = False

    @property
    def head(self) -> list[tuple]:
        if self._head is None:
            end = min(self.b, self.a + self.limits.window_chars)
            cap = self.limits.max_side_tokens + 2
            self._head = _tokenize(self.line[self.a : end], self.a, self.budget, cap)
        return self._head

    @property
    def complete(self) -> bool:
        """``head`` holds every token of the segment."""
        head = self.head
        if self.b - self.a > self.limits.window_chars:
            return False
        return len(head) < self.limits.max_side_tokens + 2

    @property
    def tail(self) -> list[tuple]:
        if self._tail is None:
            if self.complete:
                self._tail = self.head
            else:
                a = max(self.a, self.b - self.limits.window_chars)
                tail = _tokenize(self.line[a : self.b], a, self.budget, self.budget.tokens + 1)
                if tail and a > self.a:  # the first token may be cut: a break stops the side
                    tail[0] = ("z", "", True, tail[0][3], tail[0][4])
                self._tail = tail
        return self._tail

    @property
    def whole(self) -> SymbolicExpression | None:
        if self._whole is False:
            self._whole = None
            head = self.head
            if self.interior and self.complete and 0 < len(head) <= self.limits.max_side_tokens:
                try:
                    self._whole = _parse_tokens(
                        head, self.line, self.limits, self.budget, unit_words=3, whole=True
                    )[0]
                except _Reject:
                    if self.budget.tokens < 0:
                        raise
        return self._whole


def _equals_positions(line: str, limits: SymbolicLimits) -> list[int]:
    """Positions of the ``=`` signs to look at ("<=", ">=", "==" and "=>" are not)."""
    out = []
    pos = line.find("=")
    while pos != -1 and len(out) < 4 * limits.max_equations:
        out.append(pos)
        pos = line.find("=", pos + 1)
    return out


def check_equations(
    content: str,
    relations: Relations = (),
    skip: Iterable[int] = (),
    limits: SymbolicLimits = DEFAULT_SYMBOLIC_LIMITS,
) -> tuple[str, str, Relations]:
    """Judge every equation of one solution line that the symbolic reader can read.

    ``relations`` are the equations earlier lines established (``()`` at the start of a
    solution); ``skip`` the positions of ``=`` signs already judged by exact arithmetic.
    Returns ``(verdict, detail, relations)``: ``arith_error`` (with the first false equation
    in ``detail``) if one is false, else ``ok`` if one holds, else ``unchecked``; and the
    relations after this line. Cost is bounded by ``limits`` whatever ``content`` is (see
    the module docstring).
    """
    if not isinstance(content, str):
        raise TypeError(f"expected str, got {type(content).__name__}")
    line = content.translate(_NORMALIZE)
    if "<<" in line:
        line = _ANNOTATION.sub(lambda m: " " * len(m.group()), line)
    system = _System(relations, limits)
    if relations:
        system.forget(m.group(1) or m.group(2) for m in _DECLARATION.finditer(line))
    positions = _equals_positions(line, limits)
    if not positions:
        return "unchecked", "", system.freeze()
    skip = frozenset(skip)
    budget = _Budget(limits)
    bounds = [-1, *positions, len(line)]
    last = len(positions)
    segments: dict[int, _Segment] = {}

    def segment(k: int) -> _Segment:
        if k not in segments:
            segments[k] = _Segment(line, bounds[k] + 1, bounds[k + 1], limits, budget, 0 < k < last)
        return segments[k]

    verdict, detail = "unchecked", ""
    judged = 0
    try:
        for k, pos in enumerate(positions):
            if judged >= limits.max_equations:
                break
            before = line[pos - 1 : pos]
            if (
                pos in skip
                or (before and before in "<>!=")
                or line[pos + 1 : pos + 2] in ("=", ">")
            ):
                continue  # judged by exact arithmetic, or "<=", ">=", "==", "=>"
            left_seg, right_seg = segment(k), segment(k + 1)
            left = left_seg.whole
            if left is None:
                left, start = _left_side(left_seg.tail, line, limits, budget)
                if left is None:
                    continue
                if _hypothetical(left_seg.tail, start):
                    system.forget(left.vars)
            right = right_seg.whole or _right_side(
                right_seg.head, line, limits, budget, not right_seg.complete
            )
            if right is None:
                continue
            judged += 1
            try:
                result, why = _judge(left, right, system, limits, budget)
            except _Reject:
                if budget.tokens < 0:
                    raise
                result, why = "unchecked", ""
            if result == "arith_error":
                if verdict != "arith_error":
                    verdict, detail = result, why
            elif result == "ok" and verdict == "unchecked":
                verdict = "ok"
    except _Reject:
        pass  # the line's work budget is spent: the rest of it stays unchecked
    return verdict, detail, system.freeze()
