"""UnicodeText: any Unicode string up to a maximum length, with Gymnasium's utilities."""

from __future__ import annotations

import copy
import multiprocessing as mp
import pickle

import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.spaces.utils import flatdim, flatten
from gymnasium.vector.utils import (
    batch_space,
    create_empty_array,
    create_shared_memory,
    read_from_shared_memory,
    write_to_shared_memory,
)

from langrl.envs import UnicodeText

ODD_STRINGS = ["", "abc", "Ünïcødé", "٣ × ３", "😀\U0010ffff", "\x00\n\t", "\ud800 lone surrogate"]


def test_contains_accepts_any_unicode_within_length():
    space = UnicodeText(32)
    assert isinstance(space, spaces.Text)
    for s in ODD_STRINGS:
        assert space.contains(s), s
        assert s in space
    assert np.str_("numpy string") in space
    assert "x" * 33 not in space
    for not_text in (b"bytes", 5, None, ["a"], ("a",)):
        assert not space.contains(not_text)
    assert "" not in UnicodeText(4, min_length=1)


def test_sample_and_seed_are_reproducible_and_valid():
    a, b = UnicodeText(40, seed=7), UnicodeText(40, seed=7)
    samples = [a.sample() for _ in range(50)]
    assert samples == [b.sample() for _ in range(50)]
    assert all(a.contains(s) for s in samples)
    assert len({len(s) for s in samples}) > 5
    a.seed(3)
    first = a.sample()
    a.seed(3)
    assert a.sample() == first
    assert len(a.sample(mask=(5, None))) == 5
    only_x = np.zeros(len(a.sample_charset), dtype=np.int8)
    only_x[a.sample_charset.index("x")] = 1
    assert a.sample(mask=(6, only_x)) == "xxxxxx"
    with pytest.raises(ValueError):
        a.sample(mask=(41, None))


def test_equality_repr_pickle_copy():
    space = UnicodeText(10, min_length=2)
    assert space == UnicodeText(10, min_length=2)
    assert space != UnicodeText(11, min_length=2)
    assert space != spaces.Text(10, min_length=2)
    assert repr(space) == "UnicodeText(2, 10)"
    for clone in (pickle.loads(pickle.dumps(space)), copy.deepcopy(space)):
        assert clone == space and "٣😀" in clone


def test_gymnasium_utilities():
    space = UnicodeText(8)
    assert flatdim(space) == 8
    np.testing.assert_array_equal(flatten(space, "a٣")[:3], [ord("a"), ord("٣"), 0x110000])
    batched = batch_space(space, 3)
    assert isinstance(batched, spaces.Tuple) and batched.contains(("a", "٣", ""))
    assert create_empty_array(space, 2) == ("", "")


def test_shared_memory_round_trip_is_live_and_exact():
    space = UnicodeText(16)
    memory = create_shared_memory(space, n=len(ODD_STRINGS), ctx=mp)
    view = read_from_shared_memory(space, memory, n=len(ODD_STRINGS))
    for i, s in enumerate(ODD_STRINGS):
        write_to_shared_memory(space, i, s, memory)
    assert tuple(view) == tuple(ODD_STRINGS)  # read after write: the view is live
    assert copy.deepcopy(view) == tuple(ODD_STRINGS)
    assert type(copy.deepcopy(view)) is tuple
    write_to_shared_memory(space, 0, "new", memory)
    assert view[0] == "new" and view[-1] == ODD_STRINGS[-1]
