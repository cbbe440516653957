"""The self-play search's settings (1.0.0's ``MCTSConfig`` names, upper case like the rest)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["MCTSConfig"]


class MCTSConfig(BaseModel):
    """A PUCT search guided by the network: ``NUM_SIMULATIONS`` per move, exploration
    ``PUCT_COEFFICIENT``, Dirichlet noise (``DIRICHLET_ALPHA``, weight ``DIRICHLET_EPSILON``)
    on the root's priors, returns discounted by ``DISCOUNT``. Moves are drawn from the visit
    counts at temperature ``TEMPERATURE_INITIAL`` for the first ``TEMPERATURE_MOVES`` moves
    of a game, then at ``TEMPERATURE_FINAL`` (0: the most visited). A game stops after
    ``MAX_GAME_MOVES`` moves if it has not ended."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    NUM_SIMULATIONS: int = Field(default=16, ge=1, le=100_000)
    PUCT_COEFFICIENT: float = Field(default=1.5, gt=0.0, le=100.0)
    DIRICHLET_ALPHA: float = Field(default=0.3, gt=0.0, le=100.0)
    DIRICHLET_EPSILON: float = Field(default=0.25, ge=0.0, le=1.0)
    DISCOUNT: float = Field(default=0.97, gt=0.0, le=1.0)
    TEMPERATURE_INITIAL: float = Field(default=1.0, ge=0.0, le=100.0)
    TEMPERATURE_FINAL: float = Field(default=0.1, ge=0.0, le=100.0)
    TEMPERATURE_MOVES: int = Field(default=20, ge=0)
    MAX_GAME_MOVES: int = Field(default=200, ge=1, le=1_000_000)
