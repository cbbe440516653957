"""Core reinforcement-learning parts: the replay buffer."""

from alphatriangle.rl.core.buffer import ExperienceBuffer, experiences_to_columns
from alphatriangle.rl.core.sum_tree import SumTree

__all__ = ["ExperienceBuffer", "SumTree", "experiences_to_columns"]
