"""The alphatriangle data layer.

- ``alphatriangle.data.checkpoint``: the general checkpoint engine (``CheckpointManager`` and
  everything around it); it knows nothing of alphatriangle.
- ``alphatriangle.data`` itself: the alphatriangle module built on it.

Every public name of the engine is re-exported here: ``from alphatriangle.data import
CheckpointManager`` keeps working. See ``alphatriangle/data/README.md``.
"""

from alphatriangle.data.checkpoint import (
    AllOf,
    AllSave,
    AnyOf,
    AnySave,
    ArrayMetadata,
    CheckpointCorruptError,
    CheckpointError,
    CheckpointManager,
    CheckpointManagerOptions,
    CheckpointNotFoundError,
    CheckpointSignatureError,
    KeepAll,
    KeepBest,
    KeepEvery,
    KeepInterval,
    KeepLatest,
    KeepRecent,
    LockTimeoutError,
    MlflowSyncOptions,
    PickledObject,
    RetentionPolicy,
    SaveContext,
    SaveEvery,
    SaveHandle,
    SaveInitial,
    SaveInterval,
    SaveOnSteps,
    SavePolicy,
    SaveWhen,
    StepExistsError,
    StepInfo,
    UnsafeObjectError,
    WeightsOnlyError,
    add_safe_globals,
)
from alphatriangle.data.data_manager import DataManager
from alphatriangle.data.schemas import BufferData, CheckpointData, LoadedTrainingState

__all__ = [
    "AllOf",
    "AllSave",
    "AnyOf",
    "AnySave",
    "ArrayMetadata",
    "BufferData",
    "CheckpointCorruptError",
    "CheckpointData",
    "CheckpointError",
    "CheckpointManager",
    "CheckpointManagerOptions",
    "CheckpointNotFoundError",
    "CheckpointSignatureError",
    "DataManager",
    "KeepAll",
    "KeepBest",
    "KeepEvery",
    "KeepInterval",
    "KeepLatest",
    "KeepRecent",
    "LoadedTrainingState",
    "LockTimeoutError",
    "MlflowSyncOptions",
    "PickledObject",
    "RetentionPolicy",
    "SaveContext",
    "SaveEvery",
    "SaveHandle",
    "SaveInitial",
    "SaveInterval",
    "SaveOnSteps",
    "SavePolicy",
    "SaveWhen",
    "StepExistsError",
    "StepInfo",
    "UnsafeObjectError",
    "WeightsOnlyError",
    "add_safe_globals",
]
