"""Remote storage behind a small protocol, and bringing a remote step home.

:class:`RemoteStore` is what the manager needs of a remote store: list the complete remote
steps, upload a committed step (in the background, after commit), download a step's files.
``sync.MlflowSync`` is the implementation for an MLflow tracking server (its artifact store:
local, S3, GCS, Azure); a plain directory or another service can stand in its place.

:func:`fetch_step` downloads a remote step through the usual commit: into a hidden temporary
directory, verified there (the strict reading of ``inspection.verify_step``, and the
signature when a key is set), every file fsynced, then renamed into place. Nothing
unverified ever becomes a visible step. Cost: the download, one checksum pass, the fsyncs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from alphatriangle.data.checkpoint._fallback import newest_intact
from alphatriangle.data.checkpoint.catalog import StepCatalog
from alphatriangle.data.checkpoint.commit import (
    commit_step_dir,
    create_temporary_step_dir,
    fsync_files,
    remove_tree,
)
from alphatriangle.data.checkpoint.errors import CheckpointNotFoundError
from alphatriangle.data.checkpoint.inspection import verify_step
from alphatriangle.data.checkpoint.manifest import read_manifest

__all__ = ["RemoteStore", "fetch_step"]


class RemoteStore(Protocol):
    """Where committed steps go and come back from."""

    def remote_steps(self, timeout: float | None = None) -> list[int]:
        """The complete steps in the store, ascending (transient failures retried, for at
        most ``timeout`` seconds when given)."""
        ...

    def enqueue(self, step: int) -> None:
        """Upload committed ``step`` in the background (never blocking the caller)."""
        ...

    def download(self, step: int, into: Path) -> None:
        """The files of ``step`` into the empty directory ``into``."""
        ...


def _download(store: RemoteStore, catalog: StepCatalog, step: int, key: bytes | None) -> int:
    temporary = create_temporary_step_dir(catalog.directory, step)
    try:
        store.download(step, temporary)
        manifest = read_manifest(temporary, step, signing_key=key)
        verify_step(temporary, manifest, signing_key=key)
        fsync_files(temporary)
        commit_step_dir(temporary, step)
    except BaseException:
        remove_tree(temporary)
        raise
    catalog.add_committed(step, None)
    return step


def fetch_step(
    store: RemoteStore, catalog: StepCatalog, step: int | None, *, signing_key: bytes | None
) -> int:
    """Download a complete remote step (the newest when None) into the catalogue's
    directory, verified before it becomes visible; return its step. A step already here is
    not downloaded again. With ``step=None``, a corrupt or incomplete remote step is skipped
    for the previous one, loudly; when none is intact, the newest one's error is raised.
    :class:`CheckpointNotFoundError` when the store has none (or not ``step``)."""
    remote = store.remote_steps()
    if step is not None:
        if step not in remote:
            raise CheckpointNotFoundError(
                f"step {step} is not complete on the MLflow server (it has {remote})",
                path=catalog.directory,
                step=step,
            )
        if catalog.is_committed(step):
            return step
        return _download(store, catalog, step, signing_key)

    def attempt(candidate: int) -> int:
        if catalog.is_committed(candidate):
            return candidate
        return _download(store, catalog, candidate, signing_key)

    found = newest_intact(
        sorted(remote, reverse=True),
        attempt,
        skipped="remote step %d is corrupt, trying the previous one: %s",
        found="fetched step %d, the newest intact remote step",
    )
    if found is None:
        raise CheckpointNotFoundError(
            f"the MLflow run holds no complete step for {catalog.directory}",
            path=catalog.directory,
        )
    return found[0]
