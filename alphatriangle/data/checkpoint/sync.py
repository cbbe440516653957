"""Upload after commit: every committed step reaches an MLflow tracking server, in the
background, verified on the way back; no failure of the remote store stops training.

1) resolve the run (the configured run id, else the active run, else a new run in the named
experiment), once, in the background 2) for each step in the ledger of pending uploads, oldest
first: upload the files the server does not have yet, ``manifest.json`` last 3) drop the step
from the ledger. A step without its manifest on the server is incomplete and never chosen by
:meth:`MlflowSync.remote_steps`.

The ledger (``.uploads.json`` in the checkpoint directory) is written atomically: a process
that dies, SIGKILL included, leaves it whole, and the next process that opens the directory
with sync finishes what it lists, re-sending only what the server lacks. Transient failures
(judged by type and code in ``_remote_errors``: connection errors, timeouts, throttling,
5xx, for the tracking server, S3, GCS and Azure alike) are retried with exponential backoff
and jitter, by default without end: an outage of hours only delays uploads. A permanent one
(authentication, no such bucket) leaves the step in the ledger with its reason, to be tried
again by the next process; it reaches the caller's ``save`` only with
``raise_on_permanent_failure``. Each cause is logged once (an outage when it starts and when
it ends), not once per file or retry.

Deadlines: every request is one attempt with ``request_timeout_s`` (``_remote_store``);
``close`` waits at most ``close_timeout_s`` and then leaves a request still running to its
daemon thread, which no longer touches the ledger. Nothing here runs on the caller's thread of
``save`` or on the writer thread's commit path; ``mlflow`` is imported only here, and only when
sync is used.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tenacity

from alphatriangle.data.checkpoint._chunks import listed_parts
from alphatriangle.data.checkpoint._remote_errors import describe, is_transient
from alphatriangle.data.checkpoint._remote_store import (
    RunArtifacts,
    bound_mlflow_http,
    resolve_run_id,
)
from alphatriangle.data.checkpoint._sync_options import MlflowSyncOptions
from alphatriangle.data.checkpoint._upload_ledger import LEDGER_NAME, UploadLedger, UploadStatus
from alphatriangle.data.checkpoint.errors import CheckpointError
from alphatriangle.data.checkpoint.layout import (
    MANIFEST_NAME,
    REMOTE_PARTS_DIR,
    step_dir_name,
    step_from_dir_name,
    temporary_dir_name,
)

__all__ = [
    "LEDGER_NAME",
    "MlflowSync",
    "MlflowSyncOptions",
    "UploadLedger",
    "UploadStatus",
    "is_transient",
]

logger = logging.getLogger(__name__)


class MlflowSync:
    """The background uploader of one checkpoint directory, and fetching steps back.

    ``committed_steps`` lists the local steps (for the ledger's sanity); ``best_step`` names
    the step to keep pending under ``upload="latest_and_best"``; ``on_failure`` receives a
    permanent failure when ``raise_on_permanent_failure`` is set (the manager raises it at
    its next ``save``/``wait``)."""

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
        self._run_lock = threading.Lock()
        self._stopping = False
        self._closed = False  # after close, a request left running never writes the ledger
        self._busy: int | None = None  # the step being uploaded
        self._failed: set[int] = set()  # failed for good in this process
        self._files: dict[str, str | None] = {}  # other files: None in flight, else why not
        self._retrying: tuple[str, str, float] | None = None  # transient: cause, text, since
        self._logged: set[str] = set()  # transient causes logged in this outage
        self._logged_permanent: set[str] = set()
        self._client: Any = None
        self._artifacts: RunArtifacts | None = None
        self._stop_event = threading.Event()
        bound_mlflow_http(options.request_timeout_s)
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

    # -- failures -------------------------------------------------------------------------

    def _retrying_policy(self, timeout: float | None = None) -> tenacity.Retrying:
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
            before_sleep=self._note_transient,
            sleep=self._sleep,
        )

    def _sleep(self, seconds: float) -> None:
        self._stop_event.wait(seconds)  # close interrupts a backoff at once

    def _note_transient(self, state: tenacity.RetryCallState) -> None:
        failure = state.outcome.exception() if state.outcome is not None else None
        if failure is None:
            return
        cause, text = describe(failure)
        with self._cond:
            first = cause not in self._logged
            self._logged.add(cause)
            changed = self._retrying is None or self._retrying[0] != cause
            since = self._retrying[2] if self._retrying is not None else time.time()
            self._retrying = (cause, text, since)
            if changed:  # the ledger says why, written once per cause
                self.ledger.reason = text
                if self.ledger.pending and not self._closed:
                    self.ledger.save()
            pending = list(self.ledger.pending)
        if first:
            logger.warning(
                "MLflow sync cannot reach the artifact store (%s); retrying with backoff until "
                "it answers; training goes on, and steps %s wait in %s",
                text,
                pending,
                self.ledger.path,
            )
        else:
            logger.debug("MLflow sync: %s; retry %d", text, state.attempt_number)

    def _note_answered(self) -> None:
        with self._cond:
            retrying, self._retrying = self._retrying, None
            self._logged.clear()  # a later outage is logged again
        if retrying is not None:
            logger.info(
                "MLflow sync: the artifact store answers again after %.0f s; uploading",
                time.time() - retrying[2],
            )

    def _note_permanent(self, what: str, exc: BaseException) -> str:
        """Log a failure that is not retried (once per cause); its reason for the reports."""
        cause, text = describe(exc)
        if is_transient(exc):  # max_attempts or deadline_s ran out
            text = f"retries given up: {text}"
        with self._cond:
            first = cause not in self._logged_permanent
            self._logged_permanent.add(cause)
        if first:
            logger.error(
                "MLflow upload of %s failed: %s. %s; it is kept and tried again when the "
                "directory is next opened with sync (later uploads that fail the same way "
                "are not logged again)",
                what,
                text,
                "It is raised at the next save"
                if self.options.raise_on_permanent_failure
                else "Training goes on",
            )
        else:
            logger.debug("MLflow upload of %s failed: %s", what, text)
        return text

    # -- the run and the client -----------------------------------------------------------

    def client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.options.tracking_uri)
        return self._client

    def run_id(self) -> str:
        """The run steps go to (resolved once, then kept in the ledger)."""
        with self._run_lock:  # the uploader and a file's upload must not create two runs
            if self.ledger.run_id is None:
                run_id = resolve_run_id(self.client(), self.options)
                with self._cond:
                    self.ledger.run_id = run_id
                    if not self._closed:
                        self.ledger.save()
            return self.ledger.run_id

    def artifacts(self) -> RunArtifacts:
        """The run's artifact store, reached with bounded requests (``_remote_store``)."""
        run_id = self.run_id()
        with self._run_lock:
            if self._artifacts is None or self._artifacts.run_id != run_id:
                self._artifacts = RunArtifacts(
                    self.client(), run_id, self.options.request_timeout_s
                )
            return self._artifacts

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
            self.ledger.failures.pop(step, None)  # a replaced step gets a fresh start
            self._failed.discard(step)
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

    def protected(self) -> set[int]:
        """The steps retention must keep for their upload (``keep_until_uploaded``)."""
        return self.pending() if self.options.keep_until_uploaded else set()

    def status(self) -> UploadStatus:
        """What is not uploaded, and why (also after ``close``)."""
        with self._cond:
            retrying = self._retrying[1] if self._retrying is not None else None
            return UploadStatus(
                pending=tuple(self.ledger.pending),
                failures=dict(self.ledger.failures),
                retrying=retrying if retrying is not None else self.ledger.reason,
                files={name: why or "not finished" for name, why in self._files.items()},
            )

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
                for attempt in self._retrying_policy():
                    with attempt:
                        self._upload(step)
            except BaseException as exc:
                with self._cond:
                    self._busy = None
                    if self._stopping:
                        return  # closing: it stays in the ledger
                reason = self._note_permanent(f"step {step}", exc)
                if self.options.raise_on_permanent_failure:
                    self._on_failure(exc)
                with self._cond:
                    self._failed.add(step)
                    self.ledger.failures[step] = reason
                    if not self._closed:
                        self.ledger.save()
                    self._cond.notify_all()
                continue
            self._note_answered()
            with self._cond:
                self._busy = None
                if self._closed:
                    return
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
        store = self.artifacts()
        remote = self._remote_dir(step)
        present = {Path(f.path).name: f.file_size for f in store.list(remote)}
        if MANIFEST_NAME in present and not self._same_remote_manifest(step, local):
            logger.info("step %d was replaced since its upload: sending every file again", step)
            present = {}
        parts = self._upload_parts(step, local)
        names = sorted(p.name for p in local.iterdir() if p.name not in (MANIFEST_NAME, *parts))
        for name in [*names, MANIFEST_NAME]:
            if self._stop_event.is_set():
                raise CheckpointError(f"closing before step {step} was uploaded", step=step)
            if present.get(name) != (local / name).stat().st_size:
                store.upload(str(local / name), remote)

    def _upload_parts(self, step: int, local: Path) -> dict[str, str]:
        """Upload the parts of ``step`` (``_chunks.py``) the server lacks, each once, under
        its digest in ``<artifact_path>/parts/``, whatever number of steps share it; the
        parts of the step, by name."""
        parts = listed_parts(local / MANIFEST_NAME)
        if not parts:
            return parts
        store = self.artifacts()
        remote = f"{self.options.artifact_path}/{REMOTE_PARTS_DIR}"
        uploaded = {Path(f.path).name for f in store.list(remote)}
        landing = self.directory / temporary_dir_name(step)  # swept at open if left
        landing.mkdir()
        try:
            for name, digest in parts.items():
                if digest in uploaded:
                    continue
                if self._stop_event.is_set():
                    raise CheckpointError(f"closing before step {step} was uploaded", step=step)
                os.link(local / name, landing / digest)  # the part, named by its content
                store.upload(str(landing / digest), remote)
                (landing / digest).unlink()
                uploaded.add(digest)
        finally:
            shutil.rmtree(landing, ignore_errors=True)
        return parts

    def wait(self, timeout: float | None) -> bool:
        """Wait until nothing is pending (or only steps and files that failed for good);
        whether everything was uploaded."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                left = [s for s in self.ledger.pending if s not in self._failed]
                if not left and None not in self._files.values():
                    return not self.ledger.pending and not self._files
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)

    def drain(self, timeout: float | None) -> bool:
        """:meth:`wait`, then say what is left and why (a warning) when not everything went."""
        done = self.wait(timeout)
        if not done:
            logger.warning("MLflow sync: %s", self.status().one_line())
        return done

    def close(self, timeout: float) -> UploadStatus:
        """Drain uploads for at most ``timeout`` seconds (plus a fraction of one); then stop,
        leaving the rest in the ledger with its reason, and say what is left and why. A
        request still running then is left to its daemon thread, which no longer writes the
        ledger (the step is sent again, what the server lacks, by the next process)."""
        with self._cond:
            if self._closed:  # closed already (a close interrupted, then called again)
                return self.status()
        began = time.monotonic()
        self.wait(timeout)
        with self._cond:
            self._stopping = True
            self._stop_event.set()
            self._cond.notify_all()
        self._thread.join(max(0.1, timeout - (time.monotonic() - began)))
        with self._cond:
            self._closed = True
            if self._retrying is not None and self.ledger.pending:
                self.ledger.reason = self._retrying[1]
                self.ledger.save()
        status = self.status()
        if status:
            logger.warning(
                "MLflow sync: %s. The steps stay in %s and upload when the directory is next "
                "opened with sync (`alphatriangle ckpt list` shows them)",
                status.one_line(),
                self.ledger.path,
            )
        return status

    # -- reading back ---------------------------------------------------------------------

    def remote_steps(self, timeout: float | None = None) -> list[int]:
        """The complete steps on the server (those whose ``manifest.json`` is there);
        transient failures are retried like uploads, for at most ``timeout`` seconds when
        given (then the last failure is raised)."""
        for attempt in self._retrying_policy(timeout):
            with attempt:
                return self._list_remote_steps()
        raise AssertionError("unreachable")  # tenacity re-raises or returns

    def _list_remote_steps(self) -> list[int]:
        store = self.artifacts()
        steps = []
        for entry in store.list(self.options.artifact_path):
            step = step_from_dir_name(Path(entry.path).name)
            if step is None or not entry.is_dir:
                continue
            if MANIFEST_NAME in {Path(f.path).name for f in store.list(entry.path)}:
                steps.append(step)
        return sorted(steps)

    def upload_file(
        self, path: Path, artifact_path: str, on_failure: Callable[[BaseException], None]
    ) -> None:
        """Upload one file, retried like steps (runs on the caller's thread: start it on
        one of its own). A failure never reaches ``on_failure`` unless
        ``raise_on_permanent_failure`` is set: it is logged and reported by ``status``."""
        name = f"{artifact_path}/{path.name}"
        with self._cond:
            self._files[name] = None
        try:
            for attempt in self._retrying_policy():
                with attempt:
                    self.artifacts().upload(str(path), artifact_path)
        except BaseException as exc:
            stopping = self._stop_event.is_set()
            reason = (
                (self._retrying[1] if self._retrying else describe(exc)[1])
                if stopping
                else self._note_permanent(name, exc)
            )
            if not stopping and self.options.raise_on_permanent_failure:
                on_failure(exc)
            with self._cond:
                self._files[name] = reason
                self._cond.notify_all()
            return
        self._note_answered()
        with self._cond:
            self._files.pop(name, None)
            self._cond.notify_all()

    def _same_remote_manifest(self, step: int, local: Path) -> bool:
        store = self.artifacts()
        with tempfile.TemporaryDirectory(prefix=".manifest-", dir=self.directory) as landing:
            fetched = store.download(f"{self._remote_dir(step)}/{MANIFEST_NAME}", landing)
            return bool(Path(fetched).read_bytes() == (local / MANIFEST_NAME).read_bytes())

    def download(self, step: int, into: Path) -> None:
        """Download the files of ``step`` into the (empty, temporary) directory ``into``;
        retried like uploads."""
        for attempt in self._retrying_policy():
            with attempt:
                store = self.artifacts()
                landing = into / ".download"
                shutil.rmtree(landing, ignore_errors=True)
                landing.mkdir()
                fetched = Path(store.download(self._remote_dir(step), str(landing)))
                for path in fetched.iterdir():
                    if not path.is_file() or path.is_symlink():
                        raise CheckpointError(f"remote step {step} holds {path.name}, not a file")
                    path.replace(into / path.name)
                for name, digest in listed_parts(into / MANIFEST_NAME).items():
                    if not (into / name).exists():  # parts live under their digest
                        remote = f"{self.options.artifact_path}/{REMOTE_PARTS_DIR}/{digest}"
                        Path(store.download(remote, str(landing))).replace(into / name)
                shutil.rmtree(landing, ignore_errors=True)
