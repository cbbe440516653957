"""Errors of the checkpoint engine.

One root, :class:`CheckpointError`; each subclass also inherits the matching builtin, so that
``except ValueError`` or ``except TimeoutError`` in a caller keeps working. Every error carries
the ``path`` and ``step`` it is about (``None`` where it does not apply) and survives pickling,
so it can cross process and Ray boundaries intact.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

__all__ = [
    "CheckpointCorruptError",
    "CheckpointError",
    "CheckpointNotFoundError",
    "CheckpointSignatureError",
    "LockTimeoutError",
    "StepExistsError",
    "StepGoneError",
    "UnsafeObjectError",
    "WeightsOnlyError",
    "corrupt_file",
]


class CheckpointError(Exception):
    """Root of every error raised by the checkpoint engine."""

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike[str] | None = None,
        step: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = None if path is None else os.fspath(path)
        self.step = step

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only attributes are lost by the default Exception pickling.
        return (_rebuild_error, (type(self), self.message, self.path, self.step))

    def __str__(self) -> str:
        return self.message


def _rebuild_error(
    cls: type[CheckpointError], message: str, path: str | None, step: int | None
) -> CheckpointError:
    return cls(message, path=path, step=step)


class CheckpointCorruptError(CheckpointError, ValueError):
    """A committed step failed verification: a checksum mismatch, a truncated or missing file,
    or a manifest that does not parse. ``path`` names the offending file."""


class CheckpointSignatureError(CheckpointCorruptError):
    """A signing key is set and the step is unsigned, signed with another key, or was changed
    after it was signed. ``path`` names the manifest."""


class WeightsOnlyError(CheckpointError, ValueError):
    """``weights_only=True`` met a step whose item holds pickled objects; nothing was
    unpickled. ``path`` names the objects file; the message says where they sit in the tree."""


class UnsafeObjectError(CheckpointError, pickle.UnpicklingError):
    """The default restore met a pickled global outside its allow-list (it could run code)
    and unpickled nothing of the item. ``path`` names the objects file; the message names the
    global and how to allow it (register it, or trust the step)."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No committed step matches the request (none at all, or not the step asked for)."""


class StepExistsError(CheckpointError, FileExistsError):
    """A save named a step that is already committed or in flight, without ``force=True``."""


class LockTimeoutError(CheckpointError, TimeoutError):
    """The directory's writer lock is held by another writer; the message names the holder."""


class StepGoneError(CheckpointError):
    """Internal: the step directory was deleted (or replaced) before a reader's lease took
    hold. The manager answers it with :class:`CheckpointNotFoundError`, or by reading the
    next newest step."""


def corrupt_file(
    path: str | os.PathLike[str], step: int | None, why: str
) -> CheckpointCorruptError:
    """The :class:`CheckpointCorruptError` of one file of a step: ``why`` it is corrupt."""
    return CheckpointCorruptError(f"corrupt checkpoint file {path}: {why}", path=path, step=step)
