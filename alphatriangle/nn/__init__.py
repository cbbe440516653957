"""The policy/value network: :class:`NeuralNetwork` and its torch module."""

from alphatriangle.nn.model import AlphaTriangleNet
from alphatriangle.nn.network import NeuralNetwork, resolve_device

__all__ = ["AlphaTriangleNet", "NeuralNetwork", "resolve_device"]
