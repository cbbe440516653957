"""Locks that make one checkpoint directory safe for several processes.

- The writer lock (``filelock``, an ``flock`` on ``.writer.lock`` inside the directory): one
  writer per directory for its lifetime. The kernel drops it when the holder dies, SIGKILL
  included, so a crashed writer never leaves a stale lock. Who holds it is written beside it
  (``.writer.json``: pid, host, since) and named in the error a second writer gets. Within
  one process the locks held are also kept in a table, so a second writer of the same
  directory in the same process is refused at once, saying so (no wait for a lock that the
  process itself holds).
- Reader leases: a reader holds a shared ``flock`` on the step *directory* it is reading; the
  deleter takes the directory only with a non-blocking exclusive ``flock``, and skips a step it
  cannot take. A lease therefore creates no file: readers modify nothing.

These are advisory locks with local-file-system semantics (ext4, xfs, btrfs, tmpfs). On
network file systems ``flock`` may be emulated or absent; one writer per directory is then not
guaranteed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import filelock

from alphatriangle.data.checkpoint.commit import write_file_atomically
from alphatriangle.data.checkpoint.errors import (
    CheckpointNotFoundError,
    LockTimeoutError,
    StepGoneError,
)
from alphatriangle.data.checkpoint.layout import scan_steps, step_dir_name

__all__ = [
    "HOLDER_NAME",
    "LOCK_NAME",
    "WriterLock",
    "is_checkpoint_directory",
    "leased_step",
    "reader_lease",
    "step_not_found",
    "try_take_step",
]

LOCK_NAME = ".writer.lock"
HOLDER_NAME = ".writer.json"


# The directories (device, inode) whose writer lock this process holds.
_held_here: set[tuple[int, int]] = set()
_held_here_lock = threading.Lock()


def is_checkpoint_directory(path: Path) -> bool:
    """Whether a writer has ever opened ``path`` (it holds the writer lock's file) or it holds
    committed steps."""
    return (path / LOCK_NAME).exists() or bool(scan_steps(path).steps)


class WriterLock:
    """The exclusive writer lock of one directory."""

    def __init__(self, directory: Path, timeout: float) -> None:
        self.directory = directory
        self.timeout = timeout
        # thread_local=False: close() may run on another thread than the constructor.
        self._lock = filelock.FileLock(directory / LOCK_NAME, thread_local=False)
        self._key: tuple[int, int] | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`LockTimeoutError` naming the holder: at once when
        a writer of this process holds it, else after ``timeout``."""
        info = self.directory.stat()
        key = (info.st_dev, info.st_ino)
        with _held_here_lock:
            if key in _held_here:
                raise LockTimeoutError(
                    f"{self.directory} is already open for writing in this process (pid "
                    f"{os.getpid()}): close() that CheckpointManager first (or drop it), or "
                    "open this one with read_only=True to read.",
                    path=self.directory,
                )
            _held_here.add(key)
        try:
            self._lock.acquire(timeout=self.timeout)
        except BaseException as exc:
            with _held_here_lock:
                _held_here.discard(key)
            if isinstance(exc, filelock.Timeout):
                raise LockTimeoutError(
                    f"{self.directory} is locked by another writer ({self.holder()}); "
                    f"gave up after {self.timeout:g} s. Open it with read_only=True to read, "
                    "or stop the other writer.",
                    path=self.directory,
                ) from None
            raise
        self._key = key
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        try:
            write_file_atomically(self.directory / HOLDER_NAME, json.dumps(record).encode())
        except BaseException:
            self.release()
            raise

    def holder(self) -> str:
        """Who holds the lock, as its holder wrote it; "unknown holder" if unreadable."""
        try:
            record = json.loads((self.directory / HOLDER_NAME).read_text())
            return f"pid {record['pid']} on host {record['host']}, since {record['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "unknown holder"

    def release(self) -> None:
        """Release the lock (nothing when it is not held); idempotent."""
        if self._lock.is_locked:
            with contextlib.suppress(FileNotFoundError):
                (self.directory / HOLDER_NAME).unlink()
            self._lock.release(force=True)
        if self._key is not None:
            with _held_here_lock:
                _held_here.discard(self._key)
            self._key = None


@contextlib.contextmanager
def reader_lease(step_dir: Path) -> Iterator[None]:
    """Hold a shared lease on ``step_dir`` while reading it; retention will not delete it
    meanwhile. Raises :class:`StepGoneError` if the step went away before the lease held."""
    try:
        # Never through a symbolic link: a step is a directory of its own.
        fd = os.open(step_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        raise StepGoneError(str(step_dir)) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StepGoneError(str(step_dir)) from None
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        # The deleter renames a step while holding it exclusively; having waited for it, make
        # sure the name still points at the directory the lease is on.
        try:
            same = step_dir.stat().st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            raise StepGoneError(str(step_dir))
        yield
    finally:
        os.close(fd)  # closing drops the flock


@contextlib.contextmanager
def leased_step(directory: Path, step: int) -> Iterator[Path]:
    """:func:`reader_lease` on committed ``step`` of ``directory``, yielding its path; a step
    that is gone raises :class:`CheckpointNotFoundError`."""
    step_dir = directory / step_dir_name(step)
    try:
        with reader_lease(step_dir):
            yield step_dir
    except StepGoneError:
        raise step_not_found(directory, step) from None


def step_not_found(directory: Path, step: int) -> CheckpointNotFoundError:
    """What a reader is told of a step that is not (or no longer) committed."""
    step_dir = directory / step_dir_name(step)
    return CheckpointNotFoundError(
        f"step {step} not found in {directory}", path=step_dir, step=step
    )


@contextlib.contextmanager
def try_take_step(step_dir: Path) -> Iterator[bool]:
    """Try to hold ``step_dir`` exclusively without waiting: yields False when a reader holds
    a lease on it (or it is gone), True while it is held."""
    try:
        fd = os.open(step_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
