"""The manager's remote-storage methods (MLflow sync): each delegates to ``sync.MlflowSync``
(uploads, the ledger, the run) or to ``remote.fetch_step`` (a remote step brought home).
Kept apart so that ``manager.py`` reads as the save and restore orchestration alone; the
methods are those of :class:`~alphatriangle.data.checkpoint.manager.CheckpointManager`.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

from alphatriangle.data.checkpoint.errors import CheckpointError
from alphatriangle.data.checkpoint.remote import fetch_step
from alphatriangle.data.checkpoint.sync import MlflowSync, UploadStatus

if TYPE_CHECKING:
    from alphatriangle.data.checkpoint.catalog import StepCatalog
    from alphatriangle.data.checkpoint.options import CheckpointManagerOptions
    from alphatriangle.data.checkpoint.staging import StagingPool
    from alphatriangle.data.checkpoint.writer import BackgroundWriter

__all__ = ["RemoteStorageMethods"]


class RemoteStorageMethods:
    """Mixed into the manager, which provides the attributes and checks declared here."""

    directory: Path
    options: CheckpointManagerOptions
    _sync: MlflowSync | None
    _writer: BackgroundWriter | None
    _catalog: StepCatalog

    if TYPE_CHECKING:

        def _check_open(self) -> None: ...

        def _writable(self) -> tuple[BackgroundWriter, StagingPool]: ...

    def _synced(self) -> MlflowSync:
        self._check_open()
        if self._sync is None:
            raise CheckpointError(
                "MLflow sync is off: open a writer with CheckpointManagerOptions(mlflow=...)",
                path=self.directory,
            )
        return self._sync

    def wait_for_uploads(self, timeout: float | None = None) -> bool:
        """Wait for the saves in flight to commit, then up to ``timeout`` seconds more for
        every pending upload; whether all were uploaded (if not, a warning says what is left
        and why). Never raises for the network."""
        sync = self._synced()
        if self._writer is not None:
            self._writer.wait_idle()
        return sync.drain(timeout)

    def mlflow_run_id(self) -> str:
        """The MLflow run the steps go to: the configured one, else the active one, else the
        newest run named ``run_name``, else a new one; resolved once (it may reach the
        server), then kept in the upload ledger."""
        return self._synced().run_id()

    def pending_uploads(self) -> list[int]:
        """Committed steps not yet uploaded (those in the ledger)."""
        return sorted(self._synced().pending())

    def upload_status(self) -> UploadStatus:
        """What is not uploaded yet and why (each step's permanent failure, the transient one
        being retried, other files); also after ``close``, for a final report."""
        if self._sync is None:
            return self._synced().status()  # raises: sync is off
        return self._sync.status()

    def remote_steps(self, timeout: float | None = None) -> list[int]:
        """The complete steps on the MLflow server (their manifest uploaded); transient
        failures are retried, for at most ``timeout`` seconds when given."""
        return self._synced().remote_steps(timeout)

    def upload_file(self, path: Path, artifact_path: str) -> None:
        """Upload one file beside the steps (a run's configuration, say) on a thread of its
        own, retried like steps; a failure never reaches the caller unless
        ``raise_on_permanent_failure`` is set (then at the next ``save``/
        ``wait_until_finished``); ``upload_status`` reports it. Never blocks the caller."""
        sync = self._synced()
        writer, _ = self._writable()
        threading.Thread(
            target=sync.upload_file,
            args=(path, artifact_path, writer.record),
            name="mlflow-upload-file",
            daemon=True,
        ).start()

    def fetch(self, step: int | None = None) -> int:
        """Download a complete remote step (the newest when None) into this directory
        through the usual temporary-directory commit, verified before it becomes visible
        (strict reading, and the signature when a key is set); return its step. A step
        already here is not downloaded again. With ``step=None``, a corrupt or incomplete
        remote step is skipped for the previous one, loudly; when none is intact, the newest
        one's error is raised. :class:`CheckpointNotFoundError` when the server has none."""
        sync = self._synced()
        self._writable()
        return fetch_step(sync, self._catalog, step, signing_key=self.options.signing_key)
