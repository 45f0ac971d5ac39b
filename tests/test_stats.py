"""langrl.stats: the one Pearson correlation the learner and the search diagnostics use."""

from __future__ import annotations

import numpy as np
import pytest

from langrl.stats import pearson


def test_pearson_matches_numpy_and_refuses_meaningless_cases():
    xs, ys = [0.1, 0.4, 0.35, 0.9], [-1.0, 0.2, 0.0, 1.0]
    assert pearson(xs, ys) == pytest.approx(np.corrcoef(xs, ys)[0, 1])
    assert pearson([1.0, 2.0], [2.0, 1.0]) == pytest.approx(-1.0)
    assert pearson([1.0, 2.0], [2.0, 1.0], min_pairs=3) is None
    assert pearson([0.5, 0.5, 0.5], [0.0, 1.0, 0.0]) is None  # constant side: 0/0
    assert pearson([0.0, 1e-7, 0.0], [0.0, 1.0, 0.0], min_std=1e-6) is None  # rounding noise
    with pytest.raises(ValueError, match="3 xs for 2 ys"):
        pearson([1.0, 2.0, 3.0], [1.0, 2.0])
