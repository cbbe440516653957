"""The alphatriangle data layer.

- ``alphatriangle.data.checkpoint``: the general checkpoint engine (``CheckpointManager`` and
  everything around it); it knows nothing of alphatriangle.
- ``alphatriangle.data`` itself: the alphatriangle module built on it.

Every public name of the engine is re-exported here: ``from alphatriangle.data import
CheckpointManager`` keeps working. See ``alphatriangle/data/README.md``.
"""

from alphatriangle.data import checkpoint as _engine
from alphatriangle.data.checkpoint import *  # noqa: F403 - every public name of the engine
from alphatriangle.data.data_manager import DataManager
from alphatriangle.data.schemas import BufferData, CheckpointData, LoadedTrainingState

__all__ = ["BufferData", "CheckpointData", "DataManager", "LoadedTrainingState"]
__all__ += _engine.__all__
