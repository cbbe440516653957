"""The sum tree against plain sums and a linear search."""

from __future__ import annotations

import hypothesis.strategies as st
import numpy as np
from hypothesis import given

from alphatriangle.rl.core import SumTree

priorities_lists = st.lists(
    st.floats(min_value=0.0, max_value=1e3, allow_nan=False, allow_subnormal=False),
    min_size=1,
    max_size=70,
)


@given(priorities=priorities_lists, start=st.integers(0, 69))
def test_set_range_set_and_rebuild_agree(priorities: list[float], start: int) -> None:
    capacity = 70
    start = min(start, capacity - len(priorities))
    by_range, by_slots, rebuilt = SumTree(capacity), SumTree(capacity), SumTree(capacity)
    values = np.array(priorities)
    by_range.set_range(start, values)
    by_slots.set(np.arange(start, start + len(values)), values)
    rebuilt.leaves()[start : start + len(values)] = values
    rebuilt.rebuild()
    assert np.array_equal(by_range.tree, by_slots.tree)
    assert np.array_equal(by_range.tree, rebuilt.tree)
    assert np.isclose(by_range.total, values.sum())


@given(priorities=priorities_lists, fractions=st.lists(st.floats(0.0, 1.0), min_size=1))
def test_find_matches_a_linear_search_and_skips_empty_slots(
    priorities: list[float], fractions: list[float]
) -> None:
    tree = SumTree(len(priorities))
    values = np.array(priorities)
    tree.set_range(0, values)
    if tree.total <= 0:
        return
    targets = np.array(fractions) * tree.total
    slots = tree.find(targets)
    assert np.all(values[slots] > 0), "found a slot of priority zero"
    cumulative = np.cumsum(values)
    for target, slot in zip(targets, slots, strict=True):
        expected = int(np.searchsorted(cumulative, target, side="left"))
        # Float sums along the tree and along the cumsum may round differently at a boundary.
        low = cumulative[slot] - values[slot]
        assert low - 1e-9 * tree.total <= target <= cumulative[slot] + 1e-9 * tree.total or (
            expected == slot
        )


def test_set_keeps_the_last_of_duplicate_slots() -> None:
    tree = SumTree(8)
    tree.set(np.array([3, 3, 5]), np.array([1.0, 2.0, 4.0]))
    assert tree.leaves()[3] == 2.0 and tree.total == 6.0
