"""The built-in game: triangles placed on a grid of triangles, full rows cleared."""

from alphatriangle.env import game as _game
from alphatriangle.env.game import *  # noqa: F403 - every public name of the game module

__all__ = list(_game.__all__)
