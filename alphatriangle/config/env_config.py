"""The game's shape and rewards: trianglengin 1.0.6's ``EnvConfig``, as alphatriangle 1.0.0
saved it in a checkpoint's ``env_config_dict`` (fields, defaults, and the ``ACTION_DIM`` it
computed)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, computed_field, model_validator

from alphatriangle.config.base import ConfigBase

__all__ = ["EnvConfig"]

_DEFAULT_RANGES = [(3, 12), (2, 13), (1, 14), (0, 15), (0, 15), (1, 14), (2, 13), (3, 12)]


def _default_ranges(rows: int, cols: int) -> list[tuple[int, int]]:
    """trianglengin's default for 8 x 15; every cell of another grid."""
    return list(_DEFAULT_RANGES) if (rows, cols) == (8, 15) else [(0, cols)] * rows


class EnvConfig(ConfigBase):
    """Rows and columns of the triangle grid and the number of shape slots. An action places
    the shape of one slot with its anchor on one cell: ``ACTION_DIM = NUM_SHAPE_SLOTS * ROWS
    * COLS`` (360 with the defaults). ``ACTION_DIM`` as 1.0.0 saved it is accepted and must
    agree.

    ``PLAYABLE_RANGE_PER_ROW``: per row, the playable columns ``[start, end)`` (the cells
    outside are dead); the rewards: ``REWARD_PER_PLACED_TRIANGLE`` per triangle placed,
    ``REWARD_PER_CLEARED_TRIANGLE`` per triangle cleared, ``REWARD_PER_STEP_ALIVE`` per move
    that does not end the game, ``PENALTY_GAME_OVER`` on the move that does; checked as
    trianglengin checked them; the built-in game (:mod:`alphatriangle.env.game`) plays by
    them. Unlike trianglengin, ``PLAYABLE_RANGE_PER_ROW`` when not given follows a grid of
    another size than 8 x 15 (every cell playable) instead of refusing it."""

    derived_fields: ClassVar[frozenset[str]] = frozenset({"ACTION_DIM"})

    ROWS: int = Field(default=8, ge=2, le=64)
    COLS: int = Field(default=15, ge=2, le=64)
    PLAYABLE_RANGE_PER_ROW: list[tuple[int, int]] = Field(
        default_factory=lambda: list(_DEFAULT_RANGES)
    )
    NUM_SHAPE_SLOTS: int = Field(default=3, ge=1, le=8)

    REWARD_PER_PLACED_TRIANGLE: float = 0.01
    REWARD_PER_CLEARED_TRIANGLE: float = 0.5
    REWARD_PER_STEP_ALIVE: float = 0.005
    PENALTY_GAME_OVER: float = -10.0

    @model_validator(mode="before")
    @classmethod
    def _ranges_follow_the_grid(cls, data: Any) -> Any:
        if isinstance(data, dict) and "PLAYABLE_RANGE_PER_ROW" not in data:
            rows, cols = data.get("ROWS", 8), data.get("COLS", 15)
            if isinstance(rows, int) and isinstance(cols, int):
                data = {**data, "PLAYABLE_RANGE_PER_ROW": _default_ranges(rows, cols)}
        return data

    def check(self) -> None:
        ranges = self.PLAYABLE_RANGE_PER_ROW
        if len(ranges) != self.ROWS:
            raise ValueError(f"PLAYABLE_RANGE_PER_ROW has {len(ranges)} rows, ROWS is {self.ROWS}")
        for row, (start, end) in enumerate(ranges):
            if not 0 <= start < self.COLS or not start < end <= self.COLS:
                raise ValueError(
                    f"PLAYABLE_RANGE_PER_ROW[{row}] is ({start}, {end}): needs "
                    f"0 <= start < end <= COLS ({self.COLS})"
                )

    def check_derived(self, name: str, value: Any) -> None:
        if name == "ACTION_DIM" and value != self.ACTION_DIM:
            raise ValueError(
                f"ACTION_DIM {value} disagrees with NUM_SHAPE_SLOTS * ROWS * COLS "
                f"= {self.ACTION_DIM}"
            )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ACTION_DIM(self) -> int:  # noqa: N802 - 1.0.0's field name
        return self.NUM_SHAPE_SLOTS * self.ROWS * self.COLS
