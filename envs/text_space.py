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

Gymnasium's shared-memory reader for ``Text`` decodes the buffer once, when
``AsyncVectorEnv`` is built, into immutable strings, so with the default
``shared_memory=True`` every later ``reset``/``step`` would return those stale (empty)
strings. For ``UnicodeText`` we register a reader that returns a live view decoding the
buffer on access (``copy=True``, the default, deep-copies it into a plain tuple of ``str``),
and a vectorised writer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.vector.utils import read_from_shared_memory, write_to_shared_memory
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


# --- AsyncVectorEnv shared-memory transport (see the module docstring) ---

_PAD = NUM_CODE_POINTS  # Gymnasium's Text padding value: len(character_set)


class SharedTextView(Sequence):
    """Live, read-only view of ``n`` strings held in an ``AsyncVectorEnv`` buffer.

    Indexing decodes the current contents; ``copy.copy``/``copy.deepcopy`` (which
    ``AsyncVectorEnv(copy=True)`` applies to every result) give a plain ``tuple[str, ...]``.
    """

    __slots__ = ("_memory", "_n", "_max_length")

    def __init__(self, memory: Any, n: int, max_length: int) -> None:
        self._memory = memory
        self._n = n
        self._max_length = max_length

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return tuple(self._decode(i) for i in range(*index.indices(self._n)))
        if index < 0:
            index += self._n
        if not 0 <= index < self._n:
            raise IndexError(index)
        return self._decode(index)

    def _decode(self, index: int) -> str:
        size = self._max_length
        row = np.frombuffer(self._memory.get_obj(), dtype=np.int32)[
            index * size : (index + 1) * size
        ]
        pads = np.flatnonzero(row >= _PAD)
        end = int(pads[0]) if pads.size else size
        return "".join(map(chr, row[:end].tolist()))

    def __copy__(self) -> tuple[str, ...]:
        return tuple(self)

    def __deepcopy__(self, memo: dict) -> tuple[str, ...]:
        return tuple(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and tuple(self) == tuple(other)

    def __repr__(self) -> str:
        return f"SharedTextView({tuple(self)!r})"


@read_from_shared_memory.register(UnicodeText)
def _read_unicode_text(space: UnicodeText, shared_memory: Any, n: int = 1) -> SharedTextView:
    return SharedTextView(shared_memory, n, space.max_length)


@write_to_shared_memory.register(UnicodeText)
def _write_unicode_text(space: UnicodeText, index: int, value: str, shared_memory: Any) -> None:
    size = space.max_length
    if len(value) > size:
        raise ValueError(f"string of length {len(value)} exceeds max_length={size}")
    destination = np.frombuffer(shared_memory.get_obj(), dtype=np.int32)[
        index * size : (index + 1) * size
    ]
    # UTF-32 gives one code point per 4 bytes; surrogatepass keeps lone surrogates exact.
    codes = np.frombuffer(value.encode("utf-32-le", "surrogatepass"), dtype="<u4")
    destination[: len(codes)] = codes
    destination[len(codes) :] = _PAD
