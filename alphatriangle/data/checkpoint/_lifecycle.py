"""A manager dropped without ``close()``: its threads stop and its writer lock is freed.

The notebook case: a cell that opens a writer runs again after ``del manager`` (or the
object is otherwise collected). :func:`on_drop` registers a ``weakref.finalize`` that, when
the manager is collected, stops its writer thread (idle by then: a queued save keeps its
manager alive), stops its uploader (what is not uploaded stays in the ledger for the next
writer) and releases the lock, with a warning. Nothing else may keep a manager alive:
background helpers call its methods through :func:`weakly`. ``close()`` detaches the
finalizer; at interpreter exit it does not run (the writers' exit hook finishes their saves).
Cost: one finalizer per writer.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from alphatriangle.data.checkpoint.locking import WriterLock
    from alphatriangle.data.checkpoint.sync import MlflowSync
    from alphatriangle.data.checkpoint.writer import BackgroundWriter

__all__ = ["on_drop", "weakly"]

logger = logging.getLogger(__name__)
_T = TypeVar("_T")


def weakly(method: Callable[[], _T], gone: _T) -> Callable[[], _T]:
    """``method`` of an object, called without keeping the object alive (``gone`` once it
    was collected)."""
    reference = weakref.WeakMethod(method)

    def call() -> _T:
        bound = reference()
        return gone if bound is None else bound()

    return call


def on_drop(
    manager: object,
    directory: Path,
    writer: BackgroundWriter | None,
    sync: MlflowSync | None,
    lock: WriterLock,
) -> Callable[[], object]:
    """Stop ``writer`` and ``sync`` and release ``lock`` when ``manager`` is collected;
    returns what ``close()`` calls to cancel that."""
    finalizer = weakref.finalize(manager, _release_dropped, directory, writer, sync, lock)
    finalizer.atexit = False
    return finalizer.detach


def _release_dropped(
    directory: Path, writer: BackgroundWriter | None, sync: MlflowSync | None, lock: WriterLock
) -> None:
    logger.warning("the CheckpointManager of %s was dropped without close(): lock freed", directory)
    try:
        if writer is not None:
            writer.stop()
        if sync is not None:
            sync.close(0.0)  # what is not uploaded stays in the ledger for the next writer
    finally:
        lock.release()
