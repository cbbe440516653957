"""``TriangleGame``: a one-player placement game on a grid of triangles, in numpy.

The grid has ``ROWS x COLS`` cells; cell (r, c) points up when ``r + c`` is even, down
otherwise. Cells in one row that are side by side share a slanted edge; an up cell shares
its base with the down cell below it. Each turn offers ``NUM_SHAPE_SLOTS`` shapes (refilled
all at once when every slot is used); an action places the shape of one slot with its anchor
on one cell (``slot * ROWS * COLS + row * COLS + col``, the 1.0.0 action space). Only the
cells of ``PLAYABLE_RANGE_PER_ROW`` (per row, columns ``start <= c < end``; 1.0.0's) are
playable; the others are dead. A placement is legal when every cell of the shape lies on a
playable empty cell and the anchor cell points the way the shape needs. A row whose playable
cells are all filled is cleared. The reward of a move is 1.0.0's (``EnvConfig``):
``REWARD_PER_PLACED_TRIANGLE`` per placed triangle, ``REWARD_PER_CLEARED_TRIANGLE`` per
cleared triangle, then ``PENALTY_GAME_OVER`` when the move ends the game (no shape in a slot
fits anywhere), else ``REWARD_PER_STEP_ALIVE``. The score is the sum of the rewards.

What the network sees (1.0.0's shapes): ``grid`` of shape (``grid_channels``, ROWS, COLS),
``grid_channels`` being ``ModelConfig.GRID_INPUT_CHANNELS``: channel 0 is 1.0.0's (1 filled,
0 empty, -1 dead); a second channel, when asked for, is the orientation (1 where a cell
points up). ``other_features`` has ``9 * NUM_SHAPE_SLOTS + 3`` values (30 with 3 slots, as
1.0.0's ``OTHER_NN_INPUT_FEATURES_DIM``): per slot a one-hot of its shape (zeros when used)
and whether it holds one, then the filled fraction of the playable cells, the moves made over
100 and the score over 100. Cost: a move is a few boolean array operations over the grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from alphatriangle.config import EnvConfig
from alphatriangle.utils.types import StateType

__all__ = [
    "MAX_GRID_CHANNELS",
    "SHAPES",
    "Shape",
    "TriangleGame",
    "check_grid_channels",
    "feature_dim",
]

MAX_GRID_CHANNELS = 2  # occupancy (1.0.0's channel), orientation
_PAD = 2  # the widest offset of any shape: placement checks read a padded grid


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


def check_grid_channels(grid_channels: int) -> int:
    """``grid_channels`` if the game can give that many grid channels; ValueError naming
    ``ModelConfig.GRID_INPUT_CHANNELS`` otherwise."""
    if not 1 <= grid_channels <= MAX_GRID_CHANNELS:
        raise ValueError(
            f"ModelConfig.GRID_INPUT_CHANNELS is {grid_channels}, but the game gives 1 "
            f"(occupancy, 1.0.0's) or {MAX_GRID_CHANNELS} (occupancy and orientation) grid "
            "channels"
        )
    return grid_channels


def _playable(config: EnvConfig) -> np.ndarray[Any, np.dtype[np.bool_]]:
    rows, cols = config.ROWS, config.COLS
    ranges = config.PLAYABLE_RANGE_PER_ROW
    playable = np.zeros((rows, cols), dtype=bool)
    for row, (start, end) in enumerate(ranges):
        playable[row, start:end] = True
    return playable


class TriangleGame:
    """One game. ``valid_actions()``, ``step(action) -> reward``, ``is_over()``,
    ``state()`` (what the network sees), ``copy()`` (for the search)."""

    __slots__ = (
        "_valid",
        "config",
        "dead",
        "filled",
        "grid_channels",
        "moves",
        "rng",
        "score",
        "slots",
        "up",
    )

    def __init__(
        self, config: EnvConfig, rng: np.random.Generator, *, grid_channels: int = 1
    ) -> None:
        self.config = config
        self.rng = rng
        self.grid_channels = check_grid_channels(grid_channels)
        rows, cols = config.ROWS, config.COLS
        self.up = (np.add.outer(np.arange(rows), np.arange(cols)) % 2 == 0).astype(bool)
        self.dead = ~_playable(config)
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
        other.dead, other.grid_channels = self.dead, self.grid_channels
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
        padded[_PAD : _PAD + rows, _PAD : _PAD + cols] = self.filled | self.dead
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
        """Place, clear full rows, refill when every slot is used; the reward (see the
        module docstring). ValueError for an illegal action."""
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
        full = (self.filled | self.dead).all(axis=1) & ~self.dead.all(axis=1)
        cleared = int(self.filled[full].sum())
        self.filled[full] = False
        config = self.config
        reward = (
            config.REWARD_PER_PLACED_TRIANGLE * len(shape.offsets)
            + config.REWARD_PER_CLEARED_TRIANGLE * cleared
        )
        self.slots[slot] = None
        self.moves += 1
        self._valid = None
        if all(s is None for s in self.slots):
            self._refill()
        reward += config.PENALTY_GAME_OVER if self.is_over() else config.REWARD_PER_STEP_ALIVE
        self.score += reward
        return reward

    def state(self) -> StateType:
        """What the network sees (see the module docstring)."""
        grid = np.empty((self.grid_channels, *self.filled.shape), dtype=np.float32)
        grid[0] = self.filled
        grid[0][self.dead] = -1.0
        if self.grid_channels > 1:
            grid[1] = self.up
        per_slot = len(SHAPES) + 1
        other = np.zeros(feature_dim(self.config), dtype=np.float32)
        for slot, shape in enumerate(self.slots):
            if shape is not None:
                other[slot * per_slot + shape] = 1.0
                other[slot * per_slot + len(SHAPES)] = 1.0
        tail = len(self.slots) * per_slot
        playable = self.dead.size - int(self.dead.sum())
        other[tail] = self.filled.sum() / playable if playable else 0.0
        other[tail + 1] = self.moves / 100.0
        other[tail + 2] = self.score / 100.0
        return StateType(grid=grid, other_features=other)
