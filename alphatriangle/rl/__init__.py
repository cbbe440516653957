"""Reinforcement learning: the replay buffer (:mod:`alphatriangle.rl.core`)."""

from alphatriangle.rl.core import ExperienceBuffer

__all__ = ["ExperienceBuffer"]
