"""The game's shape: the grid and the shape slots, hence the action space."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, computed_field

__all__ = ["EnvConfig"]


class EnvConfig(BaseModel):
    """Rows and columns of the triangle grid and the number of shape slots. An action places
    the shape of one slot with its anchor on one cell: ``ACTION_DIM = NUM_SHAPE_SLOTS * ROWS
    * COLS`` (360 with the 1.0.0 defaults)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ROWS: int = Field(default=8, ge=2, le=64)
    COLS: int = Field(default=15, ge=2, le=64)
    NUM_SHAPE_SLOTS: int = Field(default=3, ge=1, le=8)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ACTION_DIM(self) -> int:  # noqa: N802 - 1.0.0's field name
        return self.NUM_SHAPE_SLOTS * self.ROWS * self.COLS
