"""What the DataManager's checkpoints may pickle, registered with the engine's allow-list.

The DataManager saves plain state trees (tensors, arrays, scalars, dicts); what may still be
pickled is alphatriangle's own: its schemas, its configs (in ``user_data`` or a 1.0.0 state
carried forward) and the stats' deques (allowed by the engine already). Registering them
here, once, when ``alphatriangle.data`` is imported, lets every run resume under the
engine's safe default restore. Cost: a set update at import.
"""

from __future__ import annotations

from pydantic import BaseModel

import alphatriangle.config as configs
from alphatriangle.data import schemas
from alphatriangle.data.checkpoint import add_safe_globals

__all__ = ["SAFE_GLOBALS", "register_safe_globals"]

#: alphatriangle's pydantic models (configs and schemas): built from their fields only.
SAFE_GLOBALS: tuple[type, ...] = tuple(
    value
    for module in (configs, schemas)
    for value in vars(module).values()
    if isinstance(value, type)
    and issubclass(value, BaseModel)
    and value.__module__.startswith("alphatriangle.")
)


def register_safe_globals() -> None:
    """Register :data:`SAFE_GLOBALS` (idempotent)."""
    add_safe_globals(SAFE_GLOBALS)
