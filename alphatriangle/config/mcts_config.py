"""The self-play search's settings: alphatriangle 1.0.0's ``MCTSConfig`` (its defaults; its
lower-case names are read as ours, upper case like every other config), with the discount
and the game-length cap of ours."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from alphatriangle.config.base import ConfigBase

__all__ = ["MCTSConfig"]


class MCTSConfig(ConfigBase):
    """A PUCT search guided by the network: ``NUM_SIMULATIONS`` per move, exploration
    ``PUCT_COEFFICIENT``, Dirichlet noise (``DIRICHLET_ALPHA``, weight ``DIRICHLET_EPSILON``)
    on the root's priors, returns discounted by ``DISCOUNT``. Moves are drawn from the visit
    counts at temperature ``TEMPERATURE_INITIAL`` for the first ``TEMPERATURE_MOVES`` moves
    of a game, then at ``TEMPERATURE_FINAL`` (0: the most visited). A game stops after
    ``MAX_GAME_MOVES`` moves if it has not ended.

    1.0.0's names are accepted: ``num_simulations``, ``puct_coefficient``,
    ``temperature_initial``, ``temperature_final``, ``temperature_anneal_steps`` (our
    ``TEMPERATURE_MOVES``: the same rule), ``dirichlet_alpha``, ``dirichlet_epsilon``,
    ``max_search_depth``. ``MAX_SEARCH_DEPTH`` is accepted and not acted on (the search
    descends until it reaches a new or finished position); a non-default value warns.
    ``DISCOUNT`` and ``MAX_GAME_MOVES`` are ours. The defaults are 1.0.0's: 2048 simulations
    a move is slow on a CPU; the quick presets use far fewer."""

    legacy_aliases: ClassVar[dict[str, str]] = {
        "num_simulations": "NUM_SIMULATIONS",
        "puct_coefficient": "PUCT_COEFFICIENT",
        "temperature_initial": "TEMPERATURE_INITIAL",
        "temperature_final": "TEMPERATURE_FINAL",
        "temperature_anneal_steps": "TEMPERATURE_MOVES",
        "dirichlet_alpha": "DIRICHLET_ALPHA",
        "dirichlet_epsilon": "DIRICHLET_EPSILON",
        "max_search_depth": "MAX_SEARCH_DEPTH",
    }
    ignored_fields: ClassVar[dict[str, str]] = {
        "MAX_SEARCH_DEPTH": "the search descends until it reaches a new or finished position",
    }

    NUM_SIMULATIONS: int = Field(default=2048, ge=1, le=1_000_000)
    PUCT_COEFFICIENT: float = Field(default=2.0, gt=0.0, le=100.0)
    TEMPERATURE_INITIAL: float = Field(default=1.0, ge=0.0, le=100.0)
    TEMPERATURE_FINAL: float = Field(default=0.1, ge=0.0, le=100.0)
    TEMPERATURE_MOVES: int = Field(default=100, ge=0)
    DIRICHLET_ALPHA: float = Field(default=0.3, gt=0.0, le=100.0)
    DIRICHLET_EPSILON: float = Field(default=0.25, ge=0.0, le=1.0)
    MAX_SEARCH_DEPTH: int = Field(default=64, ge=1)
    DISCOUNT: float = Field(default=0.97, gt=0.0, le=1.0)
    MAX_GAME_MOVES: int = Field(default=200, ge=1, le=1_000_000)

    def check(self) -> None:
        self.check_at_most(
            "TEMPERATURE_FINAL",
            "TEMPERATURE_INITIAL",
            "{TEMPERATURE_FINAL} cannot be greater than {TEMPERATURE_INITIAL}",
        )
