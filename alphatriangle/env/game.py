"""``TriangleGame``: a one-player placement game on a grid of triangles, in numpy.

The grid has ``ROWS x COLS`` cells; cell (r, c) points up when ``r + c`` is even, down
otherwise. Cells in one row that are side by side share a slanted edge; an up cell shares
its base with the down cell below it. Each turn offers ``NUM_SHAPE_SLOTS`` shapes (refilled
all at once when every slot is used); an action places the shape of one slot with its anchor
on one cell (``slot * ROWS * COLS + row * COLS + col``, the 1.0.0 action space). A placement
is legal when every cell of the shape lies on the grid, is empty, and the anchor cell points
the way the shape needs. Every full row is cleared. The reward is 0.1 per placed triangle
plus 1 per cleared row; the game ends when no shape in a slot fits anywhere.

What the network sees (the 1.0.0 shapes with the default configs): ``grid`` of shape
(2, ROWS, COLS), occupancy and orientation; ``other_features`` of ``9 * NUM_SHAPE_SLOTS + 3``
values, per slot a one-hot of its shape (zeros when used) and whether it holds one, then the
filled fraction, the moves made over 100 and the score over 100.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from alphatriangle.config import EnvConfig
from alphatriangle.utils.types import StateType

__all__ = ["GRID_CHANNELS", "SHAPES", "Shape", "TriangleGame", "feature_dim"]

GRID_CHANNELS = 2
_PAD = 2  # the widest offset of any shape: placement checks read a padded grid
PLACE_REWARD = 0.1
LINE_REWARD = 1.0


@dataclass(frozen=True)
class Shape:
    """Cells relative to the anchor; ``anchor_up``: the orientation the anchor needs."""

    name: str
    anchor_up: bool
    offsets: tuple[tuple[int, int], ...]


SHAPES: tuple[Shape, ...] = (
    Shape("up", True, ((0, 0),)),
    Shape("down", False, ((0, 0),)),
    Shape("pair-up", True, ((0, 0), (0, 1))),
    Shape("pair-down", False, ((0, 0), (0, 1))),
    Shape("bar-up", True, ((0, 0), (0, 1), (0, 2))),
    Shape("bar-down", False, ((0, 0), (0, 1), (0, 2))),
    Shape("diamond", True, ((0, 0), (1, 0))),
    Shape("big-up", True, ((0, 0), (1, -1), (1, 0), (1, 1))),
)


def feature_dim(env_config: EnvConfig) -> int:
    """Length of ``other_features`` for ``env_config``."""
    return (len(SHAPES) + 1) * env_config.NUM_SHAPE_SLOTS + 3


class TriangleGame:
    """One game. ``valid_actions()``, ``step(action) -> reward``, ``is_over()``,
    ``state()`` (what the network sees), ``copy()`` (for the search)."""

    __slots__ = ("_valid", "config", "filled", "moves", "rng", "score", "slots", "up")

    def __init__(self, config: EnvConfig, rng: np.random.Generator) -> None:
        self.config = config
        self.rng = rng
        rows, cols = config.ROWS, config.COLS
        self.up = (np.add.outer(np.arange(rows), np.arange(cols)) % 2 == 0).astype(bool)
        self.filled = np.zeros((rows, cols), dtype=bool)
        self.slots: list[int | None] = []
        self.moves = 0
        self.score = 0.0
        self._valid: np.ndarray[Any, np.dtype[np.bool_]] | None = None
        self._refill()

    def copy(self) -> TriangleGame:
        """A copy that shares nothing mutable but the random generator (the search's
        simulated refills draw from it)."""
        other = object.__new__(TriangleGame)
        other.config, other.rng, other.up = self.config, self.rng, self.up
        other.filled = self.filled.copy()
        other.slots = list(self.slots)
        other.moves, other.score = self.moves, self.score
        other._valid = self._valid
        return other

    def _refill(self) -> None:
        count = self.config.NUM_SHAPE_SLOTS
        self.slots = [int(i) for i in self.rng.integers(0, len(SHAPES), size=count)]
        self._valid = None

    def _anchors(self, shape: Shape) -> np.ndarray[Any, np.dtype[np.bool_]]:
        rows, cols = self.filled.shape
        padded = np.ones((rows + 2 * _PAD, cols + 2 * _PAD), dtype=bool)
        padded[_PAD : _PAD + rows, _PAD : _PAD + cols] = self.filled
        ok = self.up if shape.anchor_up else ~self.up
        for dr, dc in shape.offsets:
            ok = ok & ~padded[_PAD + dr : _PAD + dr + rows, _PAD + dc : _PAD + dc + cols]
        return np.asarray(ok, dtype=bool)

    def valid_mask(self) -> np.ndarray[Any, np.dtype[np.bool_]]:
        """Legal actions as a boolean vector of ``ACTION_DIM``."""
        if self._valid is None:
            rows, cols = self.filled.shape
            mask = np.zeros((len(self.slots), rows, cols), dtype=bool)
            for slot, shape in enumerate(self.slots):
                if shape is not None:
                    mask[slot] = self._anchors(SHAPES[shape])
            self._valid = mask.reshape(-1)
        return self._valid

    def valid_actions(self) -> np.ndarray[Any, np.dtype[np.int64]]:
        return np.flatnonzero(self.valid_mask())

    def is_over(self) -> bool:
        return not self.valid_mask().any()

    def step(self, action: int) -> float:
        """Place, clear full rows, refill when every slot is used; the reward. ValueError
        for an illegal action."""
        mask = self.valid_mask()
        if not 0 <= action < mask.size or not mask[action]:
            raise ValueError(f"action {action} is not legal in this position")
        rows, cols = self.filled.shape
        slot, cell = divmod(int(action), rows * cols)
        row, col = divmod(cell, cols)
        shape_index = self.slots[slot]
        assert shape_index is not None  # a legal action names a filled slot
        shape = SHAPES[shape_index]
        for dr, dc in shape.offsets:
            self.filled[row + dr, col + dc] = True
        full = self.filled.all(axis=1)
        self.filled[full] = False
        reward = PLACE_REWARD * len(shape.offsets) + LINE_REWARD * int(full.sum())
        self.slots[slot] = None
        self.moves += 1
        self.score += reward
        self._valid = None
        if all(s is None for s in self.slots):
            self._refill()
        return reward

    def state(self) -> StateType:
        """What the network sees (see the module docstring)."""
        grid = np.stack([self.filled, self.up]).astype(np.float32)
        per_slot = len(SHAPES) + 1
        other = np.zeros(feature_dim(self.config), dtype=np.float32)
        for slot, shape in enumerate(self.slots):
            if shape is not None:
                other[slot * per_slot + shape] = 1.0
                other[slot * per_slot + len(SHAPES)] = 1.0
        tail = len(self.slots) * per_slot
        other[tail] = self.filled.mean()
        other[tail + 1] = self.moves / 100.0
        other[tail + 2] = self.score / 100.0
        return StateType(grid=grid, other_features=other)
