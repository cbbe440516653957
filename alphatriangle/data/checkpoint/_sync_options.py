"""The options of MLflow sync: where committed steps go, which ones, how failures are
retried, and the deadlines (frozen, validated on construction: a value out of range is
refused naming the field). Cost: none until sync is used.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["MlflowSyncOptions"]


class MlflowSyncOptions(BaseModel):
    """Where and how committed steps are uploaded (frozen, validated).

    - ``tracking_uri``: the server (``http://host:5000``) or a local store
      (``file:///path/mlruns``); None: MLflow's default (``MLFLOW_TRACKING_URI``, else
      ``./mlruns``).
    - ``run_id``; else the active MLflow run; else a new run named ``run_name`` in the
      experiment ``experiment_name`` (created if missing, with its artifacts at
      ``artifact_location`` when given; MLflow's default experiment when None). The run
      chosen is kept in the ledger: a restarted process uploads to the same run. With no
      server at all: ``tracking_uri="sqlite:////path/mlflow.db"`` and an
      ``artifact_location`` directory.
    - ``upload``: ``"all"`` committed steps, or ``"latest_and_best"`` (a new step replaces
      the pending ones, except the best by the manager's ranking).
    - retries: ``max_attempts`` and/or ``deadline_s`` per upload (None, the default: retry
      transient failures without end), backoff from ``backoff_initial_s`` doubling up to
      ``backoff_max_s``, with jitter.
    - ``request_timeout_s``: the connect and read timeout of each request (one attempt:
      the client's own retries are off, see the engine README). A proxied server writes a
      file to its store before it answers: raise it for files of several GB.
    - ``artifact_path``: where steps go in the run (``checkpoints/step_000002500/``).
    - ``keep_until_uploaded``: retention keeps a step until its upload completed.
    - ``close_timeout_s``: how long ``close`` waits for pending uploads; what is left stays in
      the ledger, and a warning says what and why.
    - ``raise_on_permanent_failure``: a permanent failure (or retries given up) is raised at
      the manager's next ``save`` / ``wait_until_finished`` / ``close``; off by default: it
      is logged and reported, and the step stays in the ledger.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    tracking_uri: str | None = None
    run_id: str | None = None
    experiment_name: str | None = None
    artifact_location: str | None = None
    run_name: str | None = None
    upload: Literal["all", "latest_and_best"] = "all"
    max_attempts: int | None = Field(default=None, ge=1)
    deadline_s: float | None = Field(default=None, gt=0)
    backoff_initial_s: float = Field(default=1.0, gt=0, le=3600)
    backoff_max_s: float = Field(default=60.0, gt=0, le=86_400)
    request_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    artifact_path: str = "checkpoints"
    keep_until_uploaded: bool = True
    close_timeout_s: float = Field(default=10.0, ge=0, le=86_400)
    raise_on_permanent_failure: bool = False

    @field_validator("artifact_path")
    @classmethod
    def _relative_path(cls, value: str) -> str:
        parts = value.split("/")
        if not value or value.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(
                f"artifact_path must be a relative path without '..' or empty parts, got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _backoff_order(self) -> MlflowSyncOptions:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be >= backoff_initial_s")
        return self
