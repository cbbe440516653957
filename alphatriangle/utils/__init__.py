"""Shared types of alphatriangle (see :mod:`alphatriangle.utils.types`)."""

from alphatriangle.utils import types as _types
from alphatriangle.utils.types import *  # noqa: F403 - every public name of the types module

__all__ = list(_types.__all__)
