"""Making a step durable and visible in one atomic move, and undoing interrupted moves.

A step is written into a hidden temporary directory beside its final place. Commit fsyncs
every file (the writer does that as it closes them), then the temporary directory, renames it
to its final name and fsyncs the parent, so that both the contents and the directory entry
survive a power cut. ``rename`` is atomic on POSIX file systems: a reader sees either no step
or the whole step.

The same discipline for single files (:func:`write_file_atomically`: the upload ledger, the
writer lock's holder record, a run's configuration) and for a directory filled by someone
else (:func:`fsync_files`: a step downloaded from remote storage).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

from alphatriangle.data.checkpoint.layout import (
    scan_leftovers,
    step_dir_name,
    temporary_dir_name,
    trash_dir_name,
)

__all__ = [
    "commit_step_dir",
    "create_directory_durably",
    "create_temporary_step_dir",
    "fsync_dir",
    "fsync_files",
    "remove_tree",
    "sweep_leftovers",
    "trash_step_dir",
    "write_all",
    "write_file_atomically",
    "write_new_file",
    "write_new_file_direct",
]

logger = logging.getLogger(__name__)

WRITE_CHUNK = 64 << 20  # one write's most; a multiple of the page: O_DIRECT writes stay aligned


def write_all(fd: int, *pieces: memoryview) -> None:
    """Write ``pieces`` back to back to ``fd``, however many ``write`` calls that takes."""
    for piece in pieces:
        rest = piece
        while rest.nbytes:
            rest = rest[os.write(fd, rest[:WRITE_CHUNK]) :]


def write_new_file(path: Path, *pieces: memoryview) -> None:
    """Create ``path`` (never over a file there), write ``pieces`` back to back, fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        write_all(fd, *pieces)
        os.fsync(fd)
    finally:
        os.close(fd)


_O_DIRECT: int = getattr(os, "O_DIRECT", 0)


def write_new_file_direct(path: Path, padded: memoryview, size: int) -> None:
    """:func:`write_new_file` of ``padded[:size]``, where ``padded`` is page-aligned memory of
    whole pages: written with O_DIRECT (no copy into the page cache; the file trimmed to
    ``size``), or buffered where the file system refuses O_DIRECT (tmpfs, some network file
    systems)."""
    if not _O_DIRECT or not _write_direct(path, padded, size):
        write_new_file(path, padded[:size])


def _write_direct(path: Path, padded: memoryview, size: int) -> bool:
    """Write ``padded`` with O_DIRECT, then trim to ``size``; False when refused."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | _O_DIRECT, 0o644)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise
    try:
        write_all(fd, padded)
        os.ftruncate(fd, size)
        os.fsync(fd)  # O_DIRECT bypasses the page cache, not the metadata journal
    except OSError as exc:
        os.close(fd)
        if exc.errno == errno.EINVAL:
            path.unlink()
            return False
        raise
    os.close(fd)
    return True


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """fsync a directory, making the entries created or renamed in it durable."""
    _fsync(path, os.O_DIRECTORY)


def fsync_files(directory: Path) -> None:
    """fsync every file directly in ``directory`` (not through symbolic links)."""
    for path in directory.iterdir():
        _fsync(path, os.O_NOFOLLOW)


def write_file_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash at any instant (SIGKILL, power cut)
    leaves the old file or the new one, whole: a hidden temporary file beside it, fsynced,
    renamed over it, and the directory fsynced. Cost: two fsyncs."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        write_all(fd, memoryview(data))
        os.fsync(fd)
    finally:
        os.close(fd)
    temporary.replace(path)
    fsync_dir(path.parent)


def create_directory_durably(path: Path) -> None:
    """``mkdir -p`` whose result survives a power cut: each directory created, and its entry
    in its parent, is fsynced (``Path.mkdir(parents=True)`` fsyncs nothing, so the first
    steps committed into a new directory could vanish with it)."""
    missing = []
    current = path
    while not current.is_dir():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:
            if not directory.is_dir():
                raise
            continue  # created meanwhile by someone else, who is responsible for its fsync
        fsync_dir(directory)
        fsync_dir(directory.parent)


def create_temporary_step_dir(directory: Path, step: int) -> Path:
    """A fresh hidden directory for ``step``, never visible as a step."""
    path = directory / temporary_dir_name(step)
    path.mkdir()
    return path


def commit_step_dir(temporary: Path, step: int, *, replace: bool = False) -> Path:
    """Rename a fully written, fsynced temporary directory to its step name; fsync the parent.

    With ``replace``, an existing committed copy is first moved aside as an ``.old`` leftover
    (put back by the sweep should this process die before the new copy lands), then removed.
    Without it, an existing step makes ``FileExistsError`` (rename never overwrites silently
    here: the caller checked, and a second writer is excluded by the writer lock).
    """
    directory = temporary.parent
    final = directory / step_dir_name(step)
    fsync_dir(temporary)
    old: Path | None = None
    if replace and final.exists():
        old = directory / trash_dir_name(step, replaced=True)
        final.rename(old)
    elif final.exists():
        raise FileExistsError(f"{final} already exists")
    temporary.rename(final)
    fsync_dir(directory)
    if old is not None:
        remove_tree(old)
    return final


def trash_step_dir(step_dir: Path, step: int) -> Path:
    """Atomically take a committed step out of the step namespace; returns its new path."""
    trash = step_dir.parent / trash_dir_name(step)
    step_dir.rename(trash)
    fsync_dir(step_dir.parent)
    return trash


def remove_tree(path: Path) -> None:
    """Remove a hidden (already invisible) directory. A failure is logged, not raised: the
    directory is no step, and the next open sweeps it again."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.warning("could not remove %s (it is swept again at the next open): %s", path, exc)


def sweep_leftovers(directory: Path) -> list[Path]:
    """Clean up after crashed saves, deletes and replaces; returns what was removed.

    Temporary and trash directories are removed. The old copy of a replaced step is put back
    when the replacement never landed, so that a crash mid-replace loses nothing.
    """
    removed = []
    for leftover in scan_leftovers(directory):
        final = directory / step_dir_name(leftover.step)
        if leftover.kind == "old" and not final.exists():
            leftover.path.rename(final)
            fsync_dir(directory)
            logger.warning("restored step %d, whose replacement never landed", leftover.step)
            continue
        remove_tree(leftover.path)
        removed.append(leftover.path)
    if removed:
        logger.info("swept %d leftover directories in %s", len(removed), directory)
    return removed
