"""The checkpoint engine: :class:`CheckpointManager` for state trees of tensors, arrays and
Python objects. It knows nothing of alphatriangle (nothing outside this package is imported).

See ``alphatriangle/data/checkpoint/README.md`` for the format, the guarantees and the API.
"""

from alphatriangle.data.checkpoint._chunks import step_usage
from alphatriangle.data.checkpoint._safe_unpickling import add_safe_globals, safe_globals
from alphatriangle.data.checkpoint._upload_ledger import read_upload_status
from alphatriangle.data.checkpoint.commit import fsync_dir, write_file_atomically
from alphatriangle.data.checkpoint.errors import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointNotFoundError,
    CheckpointSignatureError,
    LockTimeoutError,
    StepExistsError,
    UnsafeObjectError,
    WeightsOnlyError,
)
from alphatriangle.data.checkpoint.inspection import ArrayMetadata, PickledObject
from alphatriangle.data.checkpoint.layout import (
    DEFAULT_ITEM,
    objects_file,
    step_dir_name,
    step_from_dir_name,
)
from alphatriangle.data.checkpoint.locking import is_checkpoint_directory
from alphatriangle.data.checkpoint.manager import CheckpointManager
from alphatriangle.data.checkpoint.options import CheckpointManagerOptions
from alphatriangle.data.checkpoint.retention import (
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
from alphatriangle.data.checkpoint.save_decision import (
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
from alphatriangle.data.checkpoint.sync import MlflowSyncOptions, UploadStatus
from alphatriangle.data.checkpoint.writer import SaveHandle

__all__ = [
    "DEFAULT_ITEM",
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
    "UnsafeObjectError",
    "UploadStatus",
    "WeightsOnlyError",
    "add_safe_globals",
    "fsync_dir",
    "is_checkpoint_directory",
    "objects_file",
    "read_upload_status",
    "safe_globals",
    "step_dir_name",
    "step_from_dir_name",
    "step_usage",
    "write_file_atomically",
]
