"""Where a run's data lives, with the field names and defaults of alphatriangle 1.0.0."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field, field_validator

from alphatriangle.config.base import ConfigBase, IgnoredFieldWarning

__all__ = ["PersistenceConfig", "RunName", "check_run_name"]

_MAX_NAME = 255


def check_run_name(name: str) -> str:
    """``name`` if it is one safe path component; ValueError saying what is wrong."""
    if not isinstance(name, str) or not name:
        raise ValueError("a run name must be a non-empty string")
    if name in (".", ".."):
        raise ValueError(f"a run name cannot be {name!r}")
    if "/" in name or "\\" in name:
        raise ValueError(f"a run name must be one path component, without separators: {name!r}")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError(f"a run name cannot hold control characters: {name!r}")
    if len(name.encode()) > _MAX_NAME:
        raise ValueError(f"a run name must fit in {_MAX_NAME} bytes")
    return name


RunName = Annotated[str, AfterValidator(check_run_name)]
"""A ``str`` field that must be one safe path component (:func:`check_run_name`)."""


class PersistenceConfig(ConfigBase):
    """Directories and file names of runs (1.0.0's), and how checkpoints are kept.

    A run lives in ``ROOT_DATA_DIR/RUNS_DIR_NAME/<run name>/``, with
    ``CHECKPOINT_SAVE_DIR_NAME/`` (committed steps), ``LOG_DIR_NAME/`` and the run's
    ``CONFIG_FILENAME``; the local MLflow store is ``ROOT_DATA_DIR/MLFLOW_DIR_NAME/``. The
    ``*_FILENAME`` fields and ``BUFFER_SAVE_DIR_NAME`` name the files of runs written by
    1.0.0, which keep loading.

    1.0.0's ``TENSORBOARD_DIR_NAME`` is accepted and not acted on (no TensorBoard logs are
    written; a non-default value warns). The ``MLFLOW_TRACKING_URI`` 1.0.0 saved (a
    ``file://`` URI it derived from the data root) is accepted and not stored: the tracking
    URI here is :attr:`MLFLOW_TRACKING_URI` (``MLFLOW_TRACKING_URI_OVERRIDE``, else a SQLite
    store under the data root); a saved URI that is not of 1.0.0's derived form (a ``file:`` URI
    ending in ``MLFLOW_DIR_NAME``) warns, since
    pointing at another store is what ``MLFLOW_TRACKING_URI_OVERRIDE`` does."""

    ignored_fields: ClassVar[dict[str, str]] = {
        "TENSORBOARD_DIR_NAME": "no TensorBoard logs are written (metrics go to MLflow)"
    }
    derived_fields: ClassVar[frozenset[str]] = frozenset({"MLFLOW_TRACKING_URI"})

    ROOT_DATA_DIR: str = ".alphatriangle_data"
    RUNS_DIR_NAME: str = "runs"
    MLFLOW_DIR_NAME: str = "mlruns"
    CHECKPOINT_SAVE_DIR_NAME: str = "checkpoints"
    BUFFER_SAVE_DIR_NAME: str = "buffers"
    LOG_DIR_NAME: str = "logs"
    TENSORBOARD_DIR_NAME: str = "tensorboard"
    LATEST_CHECKPOINT_FILENAME: str = "latest.pkl"
    BEST_CHECKPOINT_FILENAME: str = "best.pkl"
    BUFFER_FILENAME: str = "buffer.pkl"
    CONFIG_FILENAME: str = "configs.json"
    RUN_NAME: str = "default_run"
    SAVE_BUFFER: bool = True
    BUFFER_SAVE_FREQ_STEPS: int = Field(default=1000, ge=1)

    # New: retention, async saving, MLflow sync.
    KEEP_LATEST_CHECKPOINTS: int = Field(default=3, ge=1, le=1_000_000)
    KEEP_BEST_CHECKPOINTS: int = Field(default=1, ge=0, le=1_000_000)
    BEST_METRIC: str = "loss"
    BEST_MODE: Literal["min", "max"] = "min"
    KEEP_EVERY_STEPS: int | None = Field(default=None, ge=1)
    MAX_PENDING_SAVES: int = Field(default=1, ge=1, le=64)
    RESTORE_MODE: Literal["mmap", "copy"] = "mmap"  # see CheckpointManagerOptions.restore_mode
    INCREMENTAL_BUFFER_SAVES: bool = True  # the buffer in parts shared with the previous step
    ON_FULL: Literal["wait", "skip"] = "wait"
    MLFLOW_SYNC: bool = True
    MLFLOW_TRACKING_URI_OVERRIDE: str | None = None
    STATS_ACTOR_TIMEOUT_S: float = Field(default=5.0, gt=0, le=600)

    @field_validator(
        "RUNS_DIR_NAME",
        "MLFLOW_DIR_NAME",
        "CHECKPOINT_SAVE_DIR_NAME",
        "BUFFER_SAVE_DIR_NAME",
        "LOG_DIR_NAME",
        "TENSORBOARD_DIR_NAME",
        "LATEST_CHECKPOINT_FILENAME",
        "BEST_CHECKPOINT_FILENAME",
        "BUFFER_FILENAME",
        "CONFIG_FILENAME",
        "RUN_NAME",
    )
    @classmethod
    def _one_component(cls, value: str) -> str:
        return check_run_name(value)

    def check_derived(self, name: str, value: Any) -> None:
        # 1.0.0 derived it (users could not set it): a file URI of <data root>/MLFLOW_DIR_NAME,
        # absolute from the directory it ran in, so only its last component can be checked.
        derived = (
            isinstance(value, str)
            and value.startswith("file:")
            and value.rstrip("/").endswith(f"/{self.MLFLOW_DIR_NAME}")
        )
        if name == "MLFLOW_TRACKING_URI" and not derived:
            warnings.warn(
                f"PersistenceConfig.MLFLOW_TRACKING_URI={value!r} (1.0.0's saved URI) is not "
                f"acted on: the tracking URI is {self.MLFLOW_TRACKING_URI!r}; set "
                "MLFLOW_TRACKING_URI_OVERRIDE to use another store",
                IgnoredFieldWarning,
                stacklevel=2,
            )

    def get_runs_root_dir(self) -> Path:
        return Path(self.ROOT_DATA_DIR).absolute() / self.RUNS_DIR_NAME

    def get_run_base_dir(self, run_name: str | None = None) -> Path:
        return self.get_runs_root_dir() / check_run_name(run_name or self.RUN_NAME)

    def get_mlflow_abs_path(self) -> Path:
        return Path(self.ROOT_DATA_DIR).absolute() / self.MLFLOW_DIR_NAME

    @property
    def MLFLOW_TRACKING_URI(self) -> str:  # noqa: N802 - 1.0.0's name
        """The override, else a local SQLite store under the data root (no server)."""
        if self.MLFLOW_TRACKING_URI_OVERRIDE:
            return self.MLFLOW_TRACKING_URI_OVERRIDE
        return f"sqlite:///{self.get_mlflow_abs_path() / 'mlflow.db'}"
