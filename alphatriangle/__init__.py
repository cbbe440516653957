"""alphatriangle: an AlphaZero-style training stack whose data layer is an async, atomic,
crash-safe checkpoint manager for PyTorch."""

__version__ = "2.0.0.dev0"

__all__ = ["__version__"]
