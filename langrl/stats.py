"""Small statistics shared by the learner's and the search's diagnostics."""

from __future__ import annotations

import math
from collections.abc import Sequence


def pearson(
    xs: Sequence[float], ys: Sequence[float], *, min_pairs: int = 2, min_std: float = 0.0
) -> float | None:
    """Pearson correlation of two equal-length samples, or None where it means nothing:
    fewer than ``min_pairs`` pairs, or either side's (population) std at or below
    ``min_std`` (0 = exactly constant, where the correlation is 0/0)."""
    n = len(xs)
    if n != len(ys):
        raise ValueError(f"pearson: {n} xs for {len(ys)} ys")
    if n < max(min_pairs, 2):
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    dx, dy = [x - mx for x in xs], [y - my for y in ys]
    sxx, syy = sum(d * d for d in dx), sum(d * d for d in dy)
    if min(sxx, syy) / n <= min_std**2:
        return None
    return sum(a * b for a, b in zip(dx, dy, strict=True)) / math.sqrt(sxx * syy)
