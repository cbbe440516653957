"""The built-in game: triangles placed on a grid of triangles, full rows cleared."""

from alphatriangle.env.game import (
    MAX_GRID_CHANNELS,
    SHAPES,
    Shape,
    TriangleGame,
    check_grid_channels,
    feature_dim,
)

__all__ = [
    "MAX_GRID_CHANNELS",
    "SHAPES",
    "Shape",
    "TriangleGame",
    "check_grid_channels",
    "feature_dim",
]
