"""Reading the files of a step, verified: every byte checked against the manifest before it
is used, never a hang, never a read outside the step.

Files are opened without following symbolic links and without blocking on a FIFO, and must be
regular files of the size the manifest lists (checked before anything is allocated, and
against this machine's memory). Digests (xxh3, or the chunked SHA-256 of signed steps) are
computed on the one side thread that hashes (``_hash_thread.HashThread``, which the save
path uses too) while the next chunk is read or mapped, and so are the per-array checks of
partial and in-place restores (:class:`ArrayChecks`).

Cost: a pooled thread per large file or per array batch (idle ones are reused, not started
anew); a 64 MiB chunk is hashed while the next one is read (both release the GIL).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xxhash

from alphatriangle.data.checkpoint._chunks import (
    PartedFile,
    map_parts,
    open_listed,
    open_regular,
    parts_of,
    read_parts,
)
from alphatriangle.data.checkpoint._fields import CHECKSUM
from alphatriangle.data.checkpoint._hash_thread import HashThread
from alphatriangle.data.checkpoint.errors import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointSignatureError,
    corrupt_file,
)
from alphatriangle.data.checkpoint.layout import MANIFEST_NAME
from alphatriangle.data.checkpoint.mapping import map_data_file
from alphatriangle.data.checkpoint.signing import DIGEST_CHUNK, FILE_DIGEST, ChunkedDigest

if TYPE_CHECKING:
    from alphatriangle.data.checkpoint.manifest import Manifest

__all__ = [
    "ArrayChecks",
    "VerifiedReader",
    "check_allocatable",
    "check_file",
    "close_data",
    "data_entry",
    "data_mismatch",
    "digest_mismatch",
    "map_data",
    "open_data",
    "open_regular",
    "read_data",
    "read_listed",
]

READ_CHUNK = 64 << 20
HASH_CHUNK = DIGEST_CHUNK  # restore hashes chunk k while it reads chunk k + 1

Arena = np.ndarray[Any, np.dtype[np.uint8]]


class _PipelinedHash:
    """One digest of a sequence of buffers, computed on a :class:`HashThread`."""

    def __init__(self, hasher: Any) -> None:
        self._hasher = hasher
        self._thread = HashThread()

    def update(self, view: memoryview) -> None:
        self._thread.put(self._hasher.update, view)

    def until_begun(self) -> None:
        self._thread.until_begun()

    def close(self) -> None:
        self._thread.close()

    def stop(self) -> None:
        self._thread.join()

    def hexdigest(self) -> str:
        self.stop()
        return str(self._hasher.hexdigest())


class _InlineHash:
    """xxh3 computed in the caller's thread (small files)."""

    def __init__(self) -> None:
        self._hasher = xxhash.xxh3_64()

    def update(self, view: memoryview) -> None:
        self._hasher.update(view)

    def stop(self) -> None:
        pass

    def close(self) -> None:
        pass

    def hexdigest(self) -> str:
        return str(self._hasher.hexdigest())


FileHasher = _PipelinedHash | _InlineHash | ChunkedDigest


def file_hasher(*, signed: bool, threaded: bool) -> FileHasher:
    """A file's digest as the manifest lists it: the chunked SHA-256 of signed steps, else
    xxh3, on a :class:`HashThread` when ``threaded``."""
    if signed:
        return ChunkedDigest()
    return _PipelinedHash(xxhash.xxh3_64()) if threaded else _InlineHash()


class ArrayChecks:
    """Checks ``checksums[position]`` against the bytes put for each position, on a
    :class:`HashThread` (nothing when not ``enabled``). The bytes must not change until
    :meth:`finish` returns."""

    def __init__(self, checksums: list[str | None], *, enabled: bool) -> None:
        self._checksums = checksums
        self._mismatches: list[int] = []
        self._thread = HashThread() if enabled else None

    def _check(self, position: int, view: memoryview) -> None:
        if xxhash.xxh3_64_hexdigest(view) != self._checksums[position]:
            self._mismatches.append(position)

    def put(self, position: int, view: memoryview) -> None:
        if self._thread is not None:
            self._thread.put(self._check, position, view)

    def finish(self) -> int | None:
        """Wait for every check; the lowest position whose bytes did not match, or None.
        Always call it (in a ``finally``): it ends the thread."""
        if self._thread is not None:
            self._thread.join()
        return min(self._mismatches) if self._mismatches else None


def digest_mismatch(path: str | Path, step: int, *, signed: bool) -> CheckpointCorruptError:
    """The error of a file whose digest is not the listed one."""
    if signed:
        return CheckpointSignatureError(
            f"tampered checkpoint file {path}: its {FILE_DIGEST} is not the signed one",
            path=path,
            step=step,
        )
    return corrupt_file(path, step, f"checksum mismatch ({CHECKSUM})")


def _physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_allocatable(path: str | Path, step: int | None, size: int) -> None:
    """Refuse a file larger than this machine's memory, before allocating for it."""
    if size > _physical_memory():
        raise CheckpointError(
            f"{path} holds {size} bytes, more than this machine's memory "
            f"({_physical_memory()} bytes): it cannot be restored here",
            path=path,
            step=step,
        )


class VerifiedReader:
    """Reads one listed file sequentially, checking its size and (when ``verify``) its
    digest: xxh3, or SHA-256 when ``signed``. Always :meth:`close` it; :meth:`finish`
    verifies the digest."""

    def __init__(
        self, path: Path, entry: Mapping[str, Any], step: int, *, verify: bool, signed: bool
    ) -> None:
        self.path = path
        self.step = step
        self.expected_size = int(entry["size"])
        self.digest_name = FILE_DIGEST if signed else CHECKSUM
        self.expected_digest = entry.get(self.digest_name)
        self.file = os.fdopen(open_listed(path, step, self.expected_size), "rb", buffering=0)
        # A thread pays off only when there is a next chunk to read meanwhile.
        threaded = self.expected_size > READ_CHUNK
        self.hasher = file_hasher(signed=signed, threaded=threaded) if verify else None
        self.position = 0

    def read_into(self, view: memoryview) -> None:
        """Fill ``view`` (which must not change until :meth:`finish`) with the next bytes."""
        view = view.cast("B")
        filled = 0
        while filled < view.nbytes:
            got = self.file.readinto(view[filled : filled + READ_CHUNK])
            if not got:
                raise corrupt_file(self.path, self.step, "truncated while reading")
            filled += got
        if self.hasher is not None:
            self.hasher.update(view)
        self.position += filled

    def read_rest(self) -> bytes:
        check_allocatable(self.path, self.step, self.expected_size - self.position)
        data = bytearray(self.expected_size - self.position)
        self.read_into(memoryview(data))
        return bytes(data)

    def close(self) -> None:
        self.file.close()
        if self.hasher is not None:
            self.hasher.stop()

    def finish(self) -> None:
        self.close()
        if self.hasher is not None and self.hasher.hexdigest() != self.expected_digest:
            raise digest_mismatch(self.path, self.step, signed=self.digest_name == FILE_DIGEST)


def _parted(manifest: Manifest, name: str) -> Mapping[str, Any] | None:
    """The entry of a data file written as parts (``_chunks.py``), or None."""
    entry: Mapping[str, Any] | None = manifest.raw.get("parted", {}).get(name)
    return entry


def _parts(step_dir: Path, manifest: Manifest, name: str) -> list[tuple[Path, int]] | None:
    entry = _parted(manifest, name)
    return None if entry is None else parts_of(step_dir, manifest.files, name, entry["parts"])


def data_entry(manifest: Manifest, name: str) -> Mapping[str, Any]:
    """A data file's entry: its size and digests, whether whole or in parts."""
    entry = _parted(manifest, name)
    return manifest.files[name] if entry is None else entry


def open_data(step_dir: Path, manifest: Manifest, name: str) -> int | PartedFile:
    """A data file opened for ``pread`` (:func:`close_data` it): a descriptor, or its parts."""
    parts = _parts(step_dir, manifest, name)
    if parts is not None:
        return PartedFile(parts, manifest.step)
    return open_listed(step_dir / name, manifest.step, manifest.files[name]["size"])


def close_data(source: int | PartedFile) -> None:
    if isinstance(source, int):
        os.close(source)


def data_mismatch(
    step_dir: Path, manifest: Manifest, name: str, *, signed: bool
) -> CheckpointCorruptError:
    """The error of a data file whose digest did not match: for one in parts, the first
    part whose own digest does not match is named (every step sharing it names it too)."""
    for path, _ in _parts(step_dir, manifest, name) or []:
        try:
            check_file(path, manifest.files[path.name], manifest.step, signed=signed)
        except CheckpointCorruptError as exc:
            return exc
    return digest_mismatch(step_dir / name, manifest.step, signed=signed)


def _listed_entry(step_dir: Path, manifest: Manifest, name: str) -> Mapping[str, Any]:
    entry = manifest.files.get(name)
    if entry is None:
        raise corrupt_file(step_dir / MANIFEST_NAME, manifest.step, f"does not list {name}")
    return entry


def read_listed(
    step_dir: Path, manifest: Manifest, name: str, *, verify: bool, signed: bool
) -> bytes:
    """The whole of a (small) file the manifest lists, verified."""
    entry = _listed_entry(step_dir, manifest, name)
    reader = VerifiedReader(step_dir / name, entry, manifest.step, verify=verify, signed=signed)
    try:
        data = reader.read_rest()
    finally:
        reader.close()
    reader.finish()
    return data


def check_file(path: Path, entry: Mapping[str, Any], step: int, *, signed: bool) -> None:
    """Stream one file through its digest in a reused buffer; nothing is kept."""
    digest_name = FILE_DIGEST if signed else CHECKSUM
    hasher = ChunkedDigest(parallel=False) if signed else xxhash.xxh3_64()
    size = int(entry["size"])
    with os.fdopen(open_listed(path, step, size), "rb", buffering=0) as file:
        chunk = memoryview(bytearray(min(HASH_CHUNK, size)))
        remaining = size
        while remaining:
            piece = chunk[: min(remaining, HASH_CHUNK)]
            filled = 0
            while filled < piece.nbytes:  # whole chunks: the chunked digest needs them
                got = file.readinto(piece[filled:])
                if not got:
                    raise corrupt_file(path, step, "truncated while reading")
                filled += got
            hasher.update(piece)
            remaining -= filled
    if hasher.hexdigest() != entry.get(digest_name):
        raise digest_mismatch(path, step, signed=signed)


def read_data(
    step_dir: Path, manifest: Manifest, name: str, *, verify: bool, signed: bool
) -> Arena:
    """A data file read into fresh memory, verified (``restore_mode="copy"``)."""
    path = step_dir / name
    parts = _parts(step_dir, manifest, name)
    if parts is not None:
        arena = np.empty(data_entry(manifest, name)["size"], dtype=np.uint8)
        check_allocatable(path, manifest.step, arena.nbytes)
        read_parts(parts, arena, manifest.step)
        if verify:
            hasher = file_hasher(signed=signed, threaded=False)
            hasher.update(arena.data)
            if hasher.hexdigest() != data_entry(manifest, name).get(
                FILE_DIGEST if signed else CHECKSUM
            ):
                raise data_mismatch(step_dir, manifest, name, signed=signed)
        return arena
    reader = VerifiedReader(
        path, _listed_entry(step_dir, manifest, name), manifest.step, verify=verify, signed=signed
    )
    try:
        check_allocatable(path, manifest.step, reader.expected_size)
        # One allocation for the whole file (numpy asks for huge pages: cheap first touch),
        # read in chunks so that hashing one overlaps reading the next.
        arena = np.empty(reader.expected_size, dtype=np.uint8)
        for start in range(0, reader.expected_size, HASH_CHUNK):
            reader.read_into(arena.data[start : start + HASH_CHUNK])
    finally:
        reader.close()
    reader.finish()
    return arena


def map_data(
    step_dir: Path, manifest: Manifest, name: str, *, verify: bool, signed: bool
) -> tuple[Arena, FileHasher | None]:
    """A data file mapped copy-on-write, and its digest being computed on a thread (the
    mapping must not be written until the digest is read)."""
    path, step = step_dir / name, manifest.step
    parts = _parts(step_dir, manifest, name)
    if parts is not None:
        expected = int(data_entry(manifest, name)["size"])
        check_allocatable(path, step, expected)
        return _hashing(map_parts(parts, step), expected, verify=verify, signed=signed)
    expected = int(_listed_entry(step_dir, manifest, name)["size"])
    fd = open_listed(path, step, expected)
    try:
        # A private mapping may come to need as much memory as the file (when every page
        # is written): the same limit as a copy.
        check_allocatable(path, step, expected)
        try:
            arena = map_data_file(fd, expected)
        except OSError as exc:
            raise CheckpointError(f"cannot map {path}: {exc}", path=path, step=step) from exc
    finally:
        os.close(fd)
    return _hashing(arena, expected, verify=verify, signed=signed)


def _hashing(
    arena: Arena, size: int, *, verify: bool, signed: bool
) -> tuple[Arena, FileHasher | None]:
    """``arena``, and with ``verify`` the digest of its ``size`` bytes being computed on a
    thread, which has begun when this returns (xxh3; the chunks of a signed step's digest
    start on the pool's threads when they get the GIL)."""
    if not verify:
        return arena, None
    hasher = file_hasher(signed=signed, threaded=True)
    for start in range(0, size, HASH_CHUNK):
        hasher.update(arena.data[start : start + HASH_CHUNK])
    if isinstance(hasher, _PipelinedHash) and size:
        hasher.until_begun()  # the pass runs from now on, while the caller goes on
    return arena, hasher
