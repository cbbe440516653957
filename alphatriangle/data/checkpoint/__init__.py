"""The checkpoint engine: :class:`CheckpointManager` for state trees of tensors, arrays and
Python objects. It knows nothing of alphatriangle (nothing outside this package is imported).

See ``alphatriangle/data/checkpoint/README.md`` for the format, the guarantees and the API.
"""

from alphatriangle.data.checkpoint import retention, save_decision
from alphatriangle.data.checkpoint._chunks import step_usage
from alphatriangle.data.checkpoint._fallback import newest_intact
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
from alphatriangle.data.checkpoint.retention import *  # noqa: F403 (its __all__, below)
from alphatriangle.data.checkpoint.save_decision import *  # noqa: F403 (its __all__, below)
from alphatriangle.data.checkpoint.sync import MlflowSyncOptions, UploadStatus
from alphatriangle.data.checkpoint.writer import SaveHandle

__all__ = [
    "DEFAULT_ITEM",
    "ArrayMetadata",
    "CheckpointCorruptError",
    "CheckpointError",
    "CheckpointManager",
    "CheckpointManagerOptions",
    "CheckpointNotFoundError",
    "CheckpointSignatureError",
    "LockTimeoutError",
    "MlflowSyncOptions",
    "PickledObject",
    "SaveHandle",
    "StepExistsError",
    "UnsafeObjectError",
    "UploadStatus",
    "WeightsOnlyError",
    "add_safe_globals",
    "fsync_dir",
    "is_checkpoint_directory",
    "newest_intact",
    "objects_file",
    "read_upload_status",
    "safe_globals",
    "step_dir_name",
    "step_from_dir_name",
    "step_usage",
    "write_file_atomically",
]
# The policies are listed once, where they are defined.
__all__ += retention.__all__
__all__ += save_decision.__all__
