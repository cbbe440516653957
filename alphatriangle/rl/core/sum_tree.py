"""A sum tree of priorities in one numpy array, updated and searched a whole batch at a time.

Node 1 is the root; node ``i`` has children ``2i`` and ``2i + 1``; slot ``s`` is the leaf
``leaf_start + s``. Every internal node is recomputed as the sum of its two children whenever
a leaf below it changes, so the tree is a pure function of its leaves (rebuilding it from
saved leaves gives back the same tree, bit for bit).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["SumTree"]

FloatArray = np.ndarray[Any, np.dtype[np.float64]]
IndexArray = np.ndarray[Any, np.dtype[np.int64]]


class SumTree:
    """Priorities of ``capacity`` slots (all zero at first)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.leaf_start = 1 << (capacity - 1).bit_length()  # a power of two >= capacity
        self.depth = self.leaf_start.bit_length() - 1
        self.tree: FloatArray = np.zeros(2 * self.leaf_start, dtype=np.float64)

    @property
    def total(self) -> float:
        return float(self.tree[1])

    def leaves(self) -> FloatArray:
        """The slots' priorities (a view)."""
        return self.tree[self.leaf_start : self.leaf_start + self.capacity]

    def set_range(self, start: int, priorities: FloatArray) -> None:
        """Set the priorities of slots ``start, start + 1, ...`` (no wrap-around): the
        parents of a range are a range, so this costs a few slices per level."""
        if not len(priorities):
            return
        lo = self.leaf_start + start
        hi = lo + len(priorities)  # exclusive
        self.tree[lo:hi] = priorities
        tree = self.tree
        while lo > 1:
            lo, hi = lo >> 1, ((hi - 1) >> 1) + 1
            tree[lo:hi] = tree[2 * lo : 2 * hi : 2] + tree[2 * lo + 1 : 2 * hi : 2]

    def set(self, slots: IndexArray, priorities: FloatArray) -> None:
        """Set the priorities of arbitrary slots (for a slot given twice, the last wins)."""
        if not len(slots):
            return
        nodes = np.asarray(slots, dtype=np.int64) + self.leaf_start
        # Keep the last occurrence of each slot: reverse, unique, map back.
        reversed_nodes = nodes[::-1]
        unique, first = np.unique(reversed_nodes, return_index=True)
        self.tree[unique] = np.asarray(priorities, dtype=np.float64)[::-1][first]
        parents = np.unique(unique >> 1)
        tree = self.tree
        while parents[-1] >= 1:
            tree[parents] = tree[2 * parents] + tree[2 * parents + 1]
            if parents[-1] == 1:
                break
            parents = np.unique(parents >> 1)

    def rebuild(self) -> None:
        """Recompute every internal node from the leaves."""
        lo, hi = self.leaf_start, 2 * self.leaf_start
        while lo > 1:
            lo, hi = lo >> 1, hi >> 1
            self.tree[lo:hi] = self.tree[2 * lo : 2 * hi : 2] + self.tree[2 * lo + 1 : 2 * hi : 2]

    def find(self, values: FloatArray) -> IndexArray:
        """For each value in [0, total], the slot whose cumulative priority range holds it;
        never a slot of priority zero (while the total is positive)."""
        tree = self.tree
        values = np.minimum(np.asarray(values, dtype=np.float64), tree[1])
        nodes = np.ones(len(values), dtype=np.int64)
        for _ in range(self.depth):
            left = nodes * 2
            left_sum = tree[left]
            go_right = (values > left_sum) | (left_sum <= 0.0)
            # Going right, what is left of the value never exceeds the right subtree's sum
            # (float rounding could otherwise walk off into an empty slot).
            right_values = np.minimum(values - left_sum, tree[left + 1])
            values = np.where(go_right, right_values, values)
            nodes = left + go_right
        return nodes - self.leaf_start
