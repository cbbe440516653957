"""Upload after commit: every committed step reaches an MLflow tracking server, in the
background, verified on the way back.

1) resolve the run (the configured run id, else the active run, else a new run in the
named experiment), once, in the background 2) for each step in the ledger of pending
uploads, oldest first: upload the files the server does not have yet, ``manifest.json``
last 3) drop the step from the ledger. A step without its manifest on the server is
incomplete and never chosen by :meth:`MlflowSync.remote_steps`.

The ledger (``.uploads.json`` in the checkpoint directory) is written atomically (temporary
file, fsync, rename, fsync of the directory): a process that dies, SIGKILL included, leaves
it whole, and the next process that opens the directory with sync finishes what it lists,
re-sending only what the server lacks. Only transient failures are retried (connection
errors, timeouts, HTTP 408, 429 and 5xx), with exponential backoff and jitter, by default
without end: an outage of hours only delays uploads. Anything else fails fast and is
reported like any background failure; the step stays in the ledger.

Nothing here runs on the caller's thread of ``save`` or on the writer thread's commit path;
``mlflow`` is imported only here, and only when sync is used.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import tenacity
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from alphatriangle.data.checkpoint.commit import fsync_dir
from alphatriangle.data.checkpoint.errors import CheckpointError
from alphatriangle.data.checkpoint.layout import MANIFEST_NAME, step_dir_name, step_from_dir_name

__all__ = ["LEDGER_NAME", "MlflowSync", "MlflowSyncOptions", "UploadLedger", "is_transient"]

logger = logging.getLogger(__name__)

LEDGER_NAME = ".uploads.json"
_PERMANENT_CODES = {
    "INVALID_PARAMETER_VALUE",
    "RESOURCE_DOES_NOT_EXIST",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
    "BAD_REQUEST",
    "INVALID_STATE",
    "RESOURCE_ALREADY_EXISTS",
}


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
    - ``artifact_path``: where steps go in the run (``checkpoints/step_000002500/``).
    - ``keep_until_uploaded``: retention keeps a step until its upload completed.
    - ``close_timeout_s``: how long ``close`` waits for pending uploads; what is left stays in
      the ledger, and a warning says so.
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
    artifact_path: str = "checkpoints"
    keep_until_uploaded: bool = True
    close_timeout_s: float = Field(default=30.0, ge=0, le=86_400)

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


def _log_retry(state: tenacity.RetryCallState) -> None:
    failure = state.outcome.exception() if state.outcome is not None else None
    logger.warning("MLflow sync: %r; retry %d", failure, state.attempt_number)


def is_transient(exc: BaseException) -> bool:
    """Whether a failure is worth retrying: connection errors and timeouts, HTTP 408, 429
    and 5xx; not a 4xx, not a local file error."""
    import requests
    from mlflow.exceptions import MlflowException, RestException

    if isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, requests.HTTPError):
        status = exc.response.status_code if exc.response is not None else 500
        return status in (408, 429) or status >= 500
    if isinstance(exc, RestException):
        status = int(exc.get_http_status_code())  # type: ignore[no-untyped-call]
        return status in (408, 429) or status >= 500
    if isinstance(exc, MlflowException):
        code = getattr(exc, "error_code", "")
        if code in _PERMANENT_CODES:
            return False
        message = str(exc)
        if re.search(r"failed with exception|Max retries exceeded|Connection|timed out", message):
            return True
        return bool(re.search(r"\b(408|429|5\d\d)\b", message))
    return False


class UploadLedger:
    """The steps still to upload and the run they go to, in ``.uploads.json``."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / LEDGER_NAME
        self.run_id: str | None = None
        self.pending: list[int] = []
        self.readable = True
        try:
            raw = json.loads(self.path.read_bytes())
            pending = raw["pending"]
            if not isinstance(pending, list) or not all(type(s) is int for s in pending):
                raise ValueError("pending is not a list of steps")
            run_id = raw.get("run_id")
            self.run_id = run_id if isinstance(run_id, str) else None
            self.pending = sorted(set(pending))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.readable = False
            logger.error(
                "the upload ledger %s is unreadable (%s): re-checking every step", self.path, exc
            )

    def save(self) -> None:
        """Write atomically: a crash leaves the old ledger or the new one, whole."""
        temporary = self.path.with_name(f"{LEDGER_NAME}.{os.getpid()}.tmp")
        data = json.dumps({"version": 1, "run_id": self.run_id, "pending": self.pending})
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, data.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        temporary.replace(self.path)
        fsync_dir(self.path.parent)


class MlflowSync:
    """The background uploader of one checkpoint directory, and fetching steps back.

    ``committed_steps`` lists the local steps (for the ledger's sanity); ``best_step`` names
    the step to keep pending under ``upload="latest_and_best"``; ``on_failure`` receives a
    failure that is not retried (it is raised at the manager's next ``save``/``wait``)."""

    def __init__(
        self,
        directory: Path,
        options: MlflowSyncOptions,
        *,
        committed_steps: Callable[[], list[int]],
        best_step: Callable[[], int | None],
        on_failure: Callable[[BaseException], None],
    ) -> None:
        self.directory = directory
        self.options = options
        self._best_step = best_step
        self._on_failure = on_failure
        self._cond = threading.Condition()
        self._stopping = False
        self._busy: int | None = None  # the step being uploaded
        self._failed: set[int] = set()  # failed for good in this process
        self._client: Any = None
        self._stop_event = threading.Event()
        self.ledger = UploadLedger(directory)
        local = set(committed_steps())
        if not self.ledger.readable:
            self.ledger.pending = sorted(local)
        gone = [s for s in self.ledger.pending if s not in local]
        if gone:
            logger.warning("steps %s were pending upload but are gone locally: dropped", gone)
        self.ledger.pending = [s for s in self.ledger.pending if s in local]
        if gone or not self.ledger.readable:
            self.ledger.save()
        self._thread = threading.Thread(
            target=self._run, name=f"mlflow-sync:{directory.name}", daemon=True
        )
        self._thread.start()

    # -- the run and the client -----------------------------------------------------------

    def _retrying(self, timeout: float | None = None) -> tenacity.Retrying:
        options = self.options
        stop: Any = tenacity.stop_never
        if options.max_attempts is not None:
            stop = tenacity.stop_after_attempt(options.max_attempts)
        if options.deadline_s is not None:
            deadline = tenacity.stop_after_delay(options.deadline_s)
            stop = deadline if stop is tenacity.stop_never else stop | deadline
        stop = stop | tenacity.stop_when_event_set(self._stop_event)
        if timeout is not None:
            stop = stop | tenacity.stop_after_delay(timeout)
        return tenacity.Retrying(
            retry=tenacity.retry_if_exception(is_transient),
            wait=tenacity.wait_exponential(
                multiplier=options.backoff_initial_s, max=options.backoff_max_s
            )
            + tenacity.wait_random(0, options.backoff_initial_s),
            stop=stop,
            reraise=True,
            before_sleep=_log_retry,
        )

    def client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.options.tracking_uri)
        return self._client

    def run_id(self) -> str:
        """The run steps go to (resolved once, then kept in the ledger)."""
        if self.ledger.run_id is not None:
            return self.ledger.run_id
        run_id = self.options.run_id
        if run_id is None:
            import mlflow

            active = mlflow.active_run()
            if active is not None:
                run_id = str(active.info.run_id)
        if run_id is None:
            client = self.client()
            experiment_id = "0"
            if self.options.experiment_name:
                found = client.get_experiment_by_name(self.options.experiment_name)
                experiment_id = (
                    found.experiment_id
                    if found is not None
                    else client.create_experiment(
                        self.options.experiment_name,
                        artifact_location=self.options.artifact_location,
                    )
                )
            if self.options.run_name:  # a run of this name already there: resume into it
                quoted = self.options.run_name.replace("\\", "\\\\").replace("'", "\\'")
                existing = client.search_runs(
                    [experiment_id],
                    filter_string=f"attributes.run_name = '{quoted}'",
                    max_results=1,
                    order_by=["attributes.start_time DESC"],
                )
                if existing:
                    run_id = str(existing[0].info.run_id)
            if run_id is None:
                run = client.create_run(experiment_id, run_name=self.options.run_name)
                run_id = str(run.info.run_id)
        with self._cond:
            self.ledger.run_id = run_id
            self.ledger.save()
        return run_id

    def _remote_dir(self, step: int) -> str:
        return f"{self.options.artifact_path}/{step_dir_name(step)}"

    # -- uploading ------------------------------------------------------------------------

    def enqueue(self, step: int) -> None:
        """Called after ``step`` committed: record it in the ledger, wake the uploader."""
        with self._cond:
            if self.options.upload == "latest_and_best":
                best = self._best_step_safely()
                self.ledger.pending = [s for s in self.ledger.pending if s == best]
            if step not in self.ledger.pending:
                self.ledger.pending = sorted({*self.ledger.pending, step})
            self.ledger.save()
            self._cond.notify_all()

    def _best_step_safely(self) -> int | None:
        try:
            return self._best_step()
        except ValueError:  # no ranking configured
            return None

    def pending(self) -> set[int]:
        with self._cond:
            return set(self.ledger.pending)

    def _next(self) -> int | None:
        with self._cond:
            while not self._stopping:
                candidates = [s for s in self.ledger.pending if s not in self._failed]
                if candidates:
                    self._busy = candidates[0]
                    return self._busy
                self._cond.wait()
            return None

    def _run(self) -> None:
        while (step := self._next()) is not None:
            try:
                for attempt in self._retrying():
                    with attempt:
                        self._upload(step)
            except BaseException as exc:
                with self._cond:
                    self._busy = None
                    if self._stopping and is_transient(exc):
                        return  # closing: it stays in the ledger
                    self._failed.add(step)
                    self._cond.notify_all()
                logger.error(
                    "MLflow upload of step %d failed: %r (it stays in the ledger)", step, exc
                )
                self._on_failure(exc)
                continue
            with self._cond:
                self._busy = None
                if step in self.ledger.pending:
                    self.ledger.pending.remove(step)
                    self.ledger.save()
                self._cond.notify_all()

    def _upload(self, step: int) -> None:
        """Upload the files of ``step`` the server lacks (or has at another size),
        ``manifest.json`` last. When the server holds another manifest for the step (the
        step was replaced since), every file is sent again: sizes alone cannot tell."""
        local = self.directory / step_dir_name(step)
        if not local.is_dir():
            logger.warning("step %d was deleted before its upload; dropped from the ledger", step)
            return
        client, run_id = self.client(), self.run_id()
        remote = self._remote_dir(step)
        present = {Path(f.path).name: f.file_size for f in client.list_artifacts(run_id, remote)}
        if MANIFEST_NAME in present and not self._same_remote_manifest(step, local):
            logger.info("step %d was replaced since its upload: sending every file again", step)
            present = {}
        names = sorted(p.name for p in local.iterdir() if p.name != MANIFEST_NAME)
        for name in [*names, MANIFEST_NAME]:
            if present.get(name) != (local / name).stat().st_size:
                client.log_artifact(run_id, str(local / name), remote)

    def wait(self, timeout: float | None) -> bool:
        """Wait until nothing is pending (or only steps that failed for good); whether
        everything pending was uploaded."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                left = [s for s in self.ledger.pending if s not in self._failed]
                if not left:
                    return not self.ledger.pending
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)

    def close(self, timeout: float) -> None:
        """Drain uploads up to ``timeout``; then stop, leaving the rest in the ledger."""
        done = self.wait(timeout)
        with self._cond:
            self._stopping = True
            self._stop_event.set()
            self._cond.notify_all()
        self._thread.join(timeout=max(timeout, 1.0) + 60)
        if not done:
            logger.warning(
                "MLflow sync: steps %s are not uploaded yet; they stay in %s and upload when "
                "the directory is next opened with sync",
                self.pending(),
                self.ledger.path,
            )

    # -- reading back ---------------------------------------------------------------------

    def remote_steps(self, timeout: float | None = None) -> list[int]:
        """The complete steps on the server (those whose ``manifest.json`` is there);
        transient failures are retried like uploads, for at most ``timeout`` seconds when
        given (then the last failure is raised)."""
        for attempt in self._retrying(timeout):
            with attempt:
                return self._list_remote_steps()
        raise AssertionError("unreachable")  # tenacity re-raises or returns

    def _list_remote_steps(self) -> list[int]:
        client, run_id = self.client(), self.run_id()
        steps = []
        for entry in client.list_artifacts(run_id, self.options.artifact_path):
            step = step_from_dir_name(Path(entry.path).name)
            if step is None or not entry.is_dir:
                continue
            names = {Path(f.path).name for f in client.list_artifacts(run_id, entry.path)}
            if MANIFEST_NAME in names:
                steps.append(step)
        return sorted(steps)

    def upload_file(
        self, path: Path, artifact_path: str, on_failure: Callable[[BaseException], None]
    ) -> None:
        """Upload one file, retried like steps (runs on the caller's thread: start it on
        one of its own)."""
        try:
            for attempt in self._retrying():
                with attempt:
                    self.client().log_artifact(self.run_id(), str(path), artifact_path)
        except BaseException as exc:
            logger.error("MLflow upload of %s failed: %r", path, exc)
            on_failure(exc)

    def _same_remote_manifest(self, step: int, local: Path) -> bool:
        client, run_id = self.client(), self.run_id()
        with tempfile.TemporaryDirectory(prefix=".manifest-", dir=self.directory) as landing:
            fetched = client.download_artifacts(
                run_id, f"{self._remote_dir(step)}/{MANIFEST_NAME}", landing
            )
            return bool(Path(fetched).read_bytes() == (local / MANIFEST_NAME).read_bytes())

    def download(self, step: int, into: Path) -> None:
        """Download the files of ``step`` into the (empty, temporary) directory ``into``;
        retried like uploads."""
        client, run_id = self.client(), self.run_id()
        for attempt in self._retrying():
            with attempt:
                landing = into / ".download"
                shutil.rmtree(landing, ignore_errors=True)
                landing.mkdir()
                fetched = Path(
                    client.download_artifacts(run_id, self._remote_dir(step), str(landing))
                )
                for path in fetched.iterdir():
                    if not path.is_file() or path.is_symlink():
                        raise CheckpointError(f"remote step {step} holds {path.name}, not a file")
                    path.replace(into / path.name)
                shutil.rmtree(landing, ignore_errors=True)
