"""A Gymnasium text space that accepts any Unicode string up to a maximum length.

``gymnasium.spaces.Text`` stores its character set as a frozenset, a tuple and a dict, so
it cannot represent "every Unicode code point" (1,114,112 of them). Language-model text is
arbitrary Unicode, and an environment that rejects its own observations (a question with a
curly apostrophe, a model step with an emoji) breaks ``check_env`` and the passive checker.

``UnicodeText`` subclasses ``spaces.Text`` so that every Gymnasium utility registered for
``Text`` keeps working: ``batch_space`` (vector envs), ``create_empty_array``,
``flatten``/``flatdim`` and the shared-memory transport of ``AsyncVectorEnv``, which
encodes a string as ``max_length`` int32 code points padded with ``len(character_set)``.
Here a character's index is simply its code point, so that transport is exact for every
string.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray

__all__ = ["UnicodeText", "DEFAULT_SAMPLE_CHARSET"]

#: Number of Unicode code points (U+0000 .. U+10FFFF).
NUM_CODE_POINTS = 0x110000

#: Characters ``sample()`` draws from by default: printable ASCII plus a few non-ASCII
#: letters, digits and symbols, so that random actions exercise the verifiers' Unicode paths.
DEFAULT_SAMPLE_CHARSET = "".join(chr(c) for c in range(32, 127)) + "\n\t" + "éü×÷−٣３∑😀"


class _AllCodePoints(Sequence):
    """Read-only stand-in for both ``character_set`` and ``character_list``.

    Index ``i`` is ``chr(i)``; membership is "a single character". Materialising the
    1.1M-element tuple/frozenset that ``spaces.Text`` expects would cost ~100 MB per space.
    """

    __slots__ = ()

    def __len__(self) -> int:
        return NUM_CODE_POINTS

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [chr(i) for i in range(*index.indices(NUM_CODE_POINTS))]
        return chr(int(index))

    def __contains__(self, char: object) -> bool:
        return isinstance(char, str) and len(char) == 1

    def __iter__(self):
        return (chr(i) for i in range(NUM_CODE_POINTS))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _AllCodePoints)

    def __hash__(self) -> int:
        return hash(_AllCodePoints)

    def __repr__(self) -> str:
        return "<all Unicode code points>"

    def __reduce__(self):
        return (_AllCodePoints, ())


_ALL_CODE_POINTS = _AllCodePoints()


class UnicodeText(spaces.Text):
    """Any Python ``str`` with ``min_length <= len(s) <= max_length`` (lengths in code points).

    Example:
        >>> space = UnicodeText(8, min_length=0)
        >>> space.contains("٣ × 😀"), space.contains("x" * 9), space.contains(b"no")
        (True, False, False)

    Args:
        max_length: Maximum length in code points (inclusive).
        min_length: Minimum length in code points (inclusive); default 0.
        sample_charset: Characters that ``sample()`` draws from (membership does not
            depend on it). Default ``DEFAULT_SAMPLE_CHARSET``.
        seed: Seed for ``sample()``.
    """

    def __init__(
        self,
        max_length: int,
        *,
        min_length: int = 0,
        sample_charset: str = DEFAULT_SAMPLE_CHARSET,
        seed: int | np.random.Generator | None = None,
    ) -> None:
        # Reuse Text's argument checks on a tiny charset, then swap in the full code-point
        # range: Text.__init__ would otherwise build per-character tables.
        super().__init__(max_length, min_length=min_length, charset="a", seed=seed)
        if not sample_charset:
            raise ValueError("sample_charset must contain at least one character")
        self.sample_charset: str = "".join(dict.fromkeys(sample_charset))
        self._sample_chars: NDArray[np.str_] = np.array(list(self.sample_charset))

    def sample(
        self,
        mask: tuple[int | None, NDArray[np.int8] | None] | None = None,
        probability: tuple[int | None, NDArray[np.float64] | None] | None = None,
    ) -> str:
        """Random string: length uniform in [min_length, max_length] (or ``mask[0]``),
        characters uniform over ``sample_charset``.

        A per-character mask/probability would be an array over all 1.1M code points; it is
        accepted only over ``sample_charset`` (shape ``(len(sample_charset),)``).
        """
        if mask is not None and probability is not None:
            raise ValueError("Only one of `mask` or `probability` can be provided")
        weights: NDArray[np.float64] | None = None
        length: int | None = None
        given = mask if mask is not None else probability
        if given is not None:
            if not isinstance(given, tuple) or len(given) != 2:
                raise ValueError(
                    f"mask/probability must be a (length, weights) tuple, got {given!r}"
                )
            length, char_weights = given
            if char_weights is not None:
                char_weights = np.asarray(char_weights, dtype=np.float64)
                if char_weights.shape != (len(self.sample_charset),):
                    raise ValueError(
                        "UnicodeText masks are over sample_charset: expected shape "
                        f"({len(self.sample_charset)},), got {char_weights.shape}"
                    )
                total = char_weights.sum()
                if total <= 0:
                    if self.min_length == 0:
                        return ""
                    raise ValueError("the character mask is all zero but min_length > 0")
                weights = char_weights / total
        if length is None:
            length = int(self.np_random.integers(self.min_length, self.max_length + 1))
        elif not self.min_length <= length <= self.max_length:
            raise ValueError(
                f"sample length must be in [{self.min_length}, {self.max_length}], got {length}"
            )
        chars = self.np_random.choice(self._sample_chars, size=length, p=weights)
        return "".join(chars.tolist())

    def contains(self, x: Any) -> bool:
        """True for any ``str`` (including ``np.str_``) within the length bounds."""
        return isinstance(x, str) and self.min_length <= len(x) <= self.max_length

    # --- the character-table API that Gymnasium's Text utilities call ---

    @property
    def character_set(self) -> _AllCodePoints:  # type: ignore[override]
        """All Unicode code points (length 0x110000, membership = a single character)."""
        return _ALL_CODE_POINTS

    @property
    def character_list(self) -> _AllCodePoints:  # type: ignore[override]
        """Index ``i`` is ``chr(i)``."""
        return _ALL_CODE_POINTS

    def character_index(self, char: str) -> np.int32:
        """A character's index is its code point."""
        return np.int32(ord(char))

    @property
    def characters(self) -> str:
        """A representative string (Gymnasium uses ``characters[0]`` to pad empty arrays)."""
        return " "

    def __repr__(self) -> str:
        return f"UnicodeText({self.min_length}, {self.max_length})"

    def __eq__(self, other: object, /) -> bool:
        return (
            isinstance(other, UnicodeText)
            and self.min_length == other.min_length
            and self.max_length == other.max_length
        )

    def __hash__(self) -> int:
        return hash((UnicodeText, self.min_length, self.max_length))
