"""The data layer: a general checkpoint engine (:class:`CheckpointManager`) for state trees of
tensors, arrays and Python objects.

See ``alphatriangle/data/README.md`` for the format, the guarantees and the API.
"""

from alphatriangle.data.errors import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointNotFoundError,
    CheckpointSignatureError,
    LockTimeoutError,
    StepExistsError,
    WeightsOnlyError,
)
from alphatriangle.data.manager import CheckpointManager
from alphatriangle.data.options import CheckpointManagerOptions
from alphatriangle.data.reading import ArrayMetadata, PickledObject
from alphatriangle.data.retention import (
    AllOf,
    AnyOf,
    KeepAll,
    KeepBest,
    KeepEvery,
    KeepInterval,
    KeepLatest,
    KeepRecent,
    RetentionPolicy,
    StepInfo,
)
from alphatriangle.data.save_decision import (
    AllSave,
    AnySave,
    SaveContext,
    SaveEvery,
    SaveInitial,
    SaveInterval,
    SaveOnSteps,
    SavePolicy,
    SaveWhen,
)
from alphatriangle.data.sync import MlflowSyncOptions
from alphatriangle.data.writer import SaveHandle

__all__ = [
    "AllOf",
    "AllSave",
    "AnyOf",
    "AnySave",
    "ArrayMetadata",
    "CheckpointCorruptError",
    "CheckpointError",
    "CheckpointManager",
    "CheckpointManagerOptions",
    "CheckpointNotFoundError",
    "CheckpointSignatureError",
    "KeepAll",
    "KeepBest",
    "KeepEvery",
    "KeepInterval",
    "KeepLatest",
    "KeepRecent",
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
    "WeightsOnlyError",
]
