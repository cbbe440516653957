"""The built-in game: triangles placed on a grid of triangles, full rows cleared."""

from alphatriangle.env.game import GRID_CHANNELS, SHAPES, Shape, TriangleGame, feature_dim

__all__ = ["GRID_CHANNELS", "SHAPES", "Shape", "TriangleGame", "feature_dim"]
