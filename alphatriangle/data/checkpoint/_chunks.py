"""Incremental data files: an item's data stored as parts, each part equal to one of the
previous step's hard-linked instead of written again.

Concern: the bytes of an item's data file (``<item>.data``, every array of the item at its
offset) as the parts ``<item>.data.000000``, ``<item>.data.000001``..., cut where the arrays
lie (:func:`plan_spans`): an array of at least 8 MiB is cut into parts of 1/32 of its size
rounded down to a power of two, between 256 KiB and 2 MiB (:func:`part_size`), starting at a
multiple of its part size (staging places it so); smaller arrays are packed together and
cut every 256 KiB. Rows appended to a column, or a few priorities updated, change only the
parts they land in (a changed range costs at most its own bytes and two parts: 1/16 of its
array); every other part has the content of a part of the newest committed step, found by
its digest, and is made a hard link to that file: its bytes are stored once, whatever number
of steps share it. Arrays of 64 MiB and more get 2 MiB parts on 2 MiB boundaries: the page
cache holds such a part in one 2 MiB folio that a mapping takes with one page-table entry.

Why hard links rather than a store of chunks shared by name: every step directory stays
complete on its own (its files are its parts: copying, verifying, deleting, leasing or
uploading a step is what it was), deleting a step frees exactly the parts no other step
links (the file system counts the links: nothing to collect, nothing that a crash can
leak), and what a crash leaves is the temporary step directory the sweep already removes.
The cost: sharing is with the newest committed step only (the one a new save resembles), and
a file system without hard links writes every part (the save stays correct, just whole).

Guarantees:
- a part is shared only when its digest equals that of the previous step's part, as that
  step's manifest lists it: xxh3-128 (a collision between two different parts is a 2**-64
  event after 2**32 parts), or with a signing key the part's SHA-256 (the digest the
  signed manifest lists: an adversary who can build xxh3 collisions cannot make a part
  shared whose bytes differ). The new step's manifest lists every part with its own digests:
  a part damaged on disk is named by every step that links it, by restore and by verify;
- a new part is written (with O_DIRECT when staged in page-aligned memory, as a whole data
  file is) and fsynced inside the step's temporary directory; a link is a
  directory entry of it: the commit's fsync of that directory makes both durable;
- reading maps the parts side by side into one contiguous copy-on-write region
  (:func:`map_parts`: no copy, as a whole data file is mapped), or reads them
  (:func:`read_parts`, :class:`PartedFile` for ranges). A reader takes the parts' sizes from
  the manifest (whole pages but the last): steps cut by another plan read alike.
Cost: one xxh3-128 pass (SHA-256 when signed) over the data at save to find the shared
parts, one O_DIRECT write, fsync and checksum per new part, one ``link`` per shared part;
at restore, an ``open`` and a ``mmap`` per part, and a page fault per folio (one per 2 MiB
part: see :func:`map_parts`; the engine README has the figures).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import mmap
import os
import re
import stat
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from alphatriangle.data.checkpoint._fields import CHECKSUM, is_int
from alphatriangle.data.checkpoint.commit import write_new_file, write_new_file_direct
from alphatriangle.data.checkpoint.errors import CheckpointError, corrupt_file
from alphatriangle.data.checkpoint.signing import FILE_DIGEST, ChunkedDigest

__all__ = [
    "MAX_PART",
    "MIN_PART",
    "PART_DIGEST",
    "PartedFile",
    "WrittenParts",
    "is_parted",
    "listed_parts",
    "map_parts",
    "open_listed",
    "open_regular",
    "part_names",
    "part_size",
    "parted_problem",
    "parts_of",
    "plan_spans",
    "read_parts",
    "shareable_parts",
    "step_usage",
    "write_parts",
]

MIN_PART = 256 << 10  # packed small arrays; see the engine README ("Incremental saves")
MAX_PART = 2 << 20  # a huge page: one page-table entry maps such a part on such a boundary
PARTS_PER_ARRAY = 32  # an array's parts: a changed range costs at most 2/32 of its array
PART_DIGEST = "xxh3_128"  # what identifies a part for sharing, without a signing key
PART_ALIGNMENT = 4096  # every part but a file's last: whole pages of 4 KiB
_PAGE = mmap.PAGESIZE
_HEX128 = re.compile(r"^[0-9a-f]{32}$")
_PART_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,200}\.[0-9]{6}$")


def is_parted(incremental: bool | frozenset[str], item: str) -> bool:
    """Whether ``item``'s data file is written as parts, given the ``incremental`` option
    (every item, or the items named)."""
    return incremental is True or (isinstance(incremental, frozenset) and item in incremental)


def part_size(nbytes: int) -> int | None:
    """The part size of an array of ``nbytes`` in a data file written as parts: 1/32 of it
    rounded down to a power of two, between :data:`MIN_PART` and :data:`MAX_PART`; None for
    an array under 32 * MIN_PART (8 MiB), packed with its neighbours instead. The array
    starts at a multiple of its part size (``staging`` places it so)."""
    if nbytes < PARTS_PER_ARRAY * MIN_PART:
        return None
    return min(MAX_PART, 1 << ((nbytes // PARTS_PER_ARRAY).bit_length() - 1))


def _page_ceil(offset: int) -> int:
    return -(-offset // PART_ALIGNMENT) * PART_ALIGNMENT


def plan_spans(nbytes: int, arrays: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """``(offset, size)`` of each part of a data file of ``nbytes`` whose arrays lie at
    ``arrays`` (offset, size): each array with a :func:`part_size` (at a multiple of it) in
    parts of that size, its last part running to the next page; the stretches between in
    parts of :data:`MIN_PART`. Every part but the last is whole pages."""
    cuts: dict[int, int] = {}  # the start of each big array's part: its end
    for offset, size in sorted(arrays):
        part = part_size(size)
        if part is None or offset % part or offset + size > nbytes:
            continue  # packed (an array placed otherwise is packed too)
        for start in range(offset, offset + size, part):
            cuts[start] = start + part if start + part < offset + size else offset + size
    spans: list[tuple[int, int]] = []
    position = 0
    for start in [*sorted(cuts), nbytes]:
        if start < position:
            continue  # arrays that overlap: the first one's parts hold both
        spans += [(at, min(MIN_PART, start - at)) for at in range(position, start, MIN_PART)]
        if start < nbytes:
            position = min(_page_ceil(cuts[start]), nbytes)
            spans.append((start, position - start))
    return spans


def part_names(data_name: str, count: int) -> list[str]:
    """The file names of the ``count`` parts of the data file ``data_name``."""
    return [f"{data_name}.{index:06d}" for index in range(count)]


def parted_problem(
    files: Mapping[str, Any], parted: Any, hex_patterns: Mapping[str, Any]
) -> str | None:
    """What is wrong with a manifest's ``parted`` table (data file name: its size, digests
    and number of parts), given its ``files``; None when each data file's parts are listed,
    in order, whole pages but the last, adding up to its size."""
    if not isinstance(parted, dict):
        return "parted is not an object"
    for name, entry in parted.items():
        count: Any = entry.get("parts") if isinstance(entry, dict) else None
        size: Any = entry.get("size") if isinstance(entry, dict) else None
        if not (is_int(count) and is_int(size)) or count < 0 or size < 0:
            return f"the parted entry of {name!r:.100} has no valid size and parts"
        for digest, pattern in hex_patterns.items():
            value = entry.get(digest)
            if value is not None and not (isinstance(value, str) and pattern.match(value)):
                return f"the parted entry of {name!r:.100} has no valid {digest}"
        total = 0
        for index, part in enumerate(part_names(name, count)):
            listed: Any = files.get(part)
            bytes_: Any = listed.get("size") if isinstance(listed, dict) else None
            last = index == count - 1
            if not (is_int(bytes_) and bytes_ > 0 and (last or bytes_ % PART_ALIGNMENT == 0)):
                return f"{name}: its part {part} is not listed with a size in whole pages"
            value = listed.get(PART_DIGEST)
            if not (isinstance(value, str) and _HEX128.match(value)):
                return f"the entry of {part} has no valid {PART_DIGEST}"
            total += bytes_
        if total != size:
            return f"{name} of {size} bytes is not the sum of its {count} parts"
        if name in files:
            return f"{name} is listed both whole and in parts"
    return None


def parts_of(
    step_dir: Path, files: Mapping[str, Any], name: str, count: int
) -> list[tuple[Path, int]]:
    """Each part of the data file ``name`` (``count`` parts): its path and listed size."""
    return [(step_dir / part, int(files[part]["size"])) for part in part_names(name, count)]


def listed_parts(manifest_path: Path) -> dict[str, str]:
    """The parts a step's manifest lists, by name: their xxh3-128 digests (for uploading
    and fetching each part once, under its digest). Only names and digests of the right
    form are taken; reading the step later checks everything else."""
    try:
        raw = json.loads(manifest_path.read_bytes())
    except (OSError, ValueError):
        return {}
    files = raw.get("files") if isinstance(raw, dict) else None
    if not isinstance(files, dict) or not isinstance(raw.get("parted"), dict):
        return {}
    return {
        name: entry[PART_DIGEST]
        for name, entry in files.items()
        if isinstance(name, str)
        and _PART_NAME.match(name)
        and isinstance(entry, dict)
        and isinstance(entry.get(PART_DIGEST), str)
        and _HEX128.match(entry[PART_DIGEST])
    }


def shareable_parts(
    step_dir: Path, files: Mapping[str, Mapping[str, Any]], *, signed: bool
) -> dict[str, tuple[Path, Mapping[str, Any]]]:
    """The parts of a committed step (its manifest's ``files``) that a new step may link,
    by the digest they are shared by (SHA-256 when ``signed``, else xxh3-128)."""
    shareable = {}
    for name, entry in files.items():
        if PART_DIGEST not in entry or (signed and FILE_DIGEST not in entry):
            continue
        key = entry[FILE_DIGEST] if signed else entry[PART_DIGEST]
        shareable[key] = (step_dir / name, entry)
    return shareable


def _link(source: Path, target: Path, size: int) -> bool:
    """Hard-link ``source`` as ``target``, if it is still the file of ``size`` bytes the
    manifest listed; False (the caller writes the bytes) when it cannot be linked."""
    try:
        info = source.lstat()
        if not stat.S_ISREG(info.st_mode) or info.st_size != size:
            return False
        os.link(source, target, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.EPERM, errno.EMLINK, errno.EXDEV, errno.ENOTSUP):
            return False  # gone meanwhile, too many links, or no hard links here
        raise
    return True


@dataclass(frozen=True)
class WrittenParts:
    """The manifest entries of a data file's parts, and how many bytes were written (the
    rest is linked)."""

    entries: dict[str, dict[str, Any]]
    written_bytes: int


def write_parts(
    directory: Path,
    data_name: str,
    data: memoryview | bytes,
    shareable: Mapping[str, tuple[Path, Mapping[str, Any]]],
    *,
    signed: bool,
    arrays: Sequence[tuple[int, int]] = (),
    padded: memoryview | None = None,
) -> WrittenParts:
    """Write ``data`` as the parts of ``data_name`` into ``directory`` (a temporary step
    directory), cut where its ``arrays`` (offset, size) lie (:func:`plan_spans`), linking
    each part whose digest ``shareable`` holds (see :func:`shareable_parts`). With
    ``padded`` (``data`` in page-aligned memory, padded to whole pages), new parts are
    written with O_DIRECT, as whole data files are: the page cache is filled by reading, in
    the large folios a mapping takes whole (:func:`map_parts`). Every file is fsynced before
    this returns."""
    view = memoryview(data).cast("B")
    spans = plan_spans(view.nbytes, arrays)
    entries: dict[str, dict[str, Any]] = {}
    written = 0
    for name, (offset, size) in zip(part_names(data_name, len(spans)), spans, strict=True):
        piece = view[offset : offset + size]
        entry: dict[str, Any] = {"size": size, PART_DIGEST: xxhash.xxh3_128_hexdigest(piece)}
        if signed:
            digest = ChunkedDigest(parallel=False)
            digest.update(piece)
            entry[FILE_DIGEST] = digest.hexdigest()
        source = shareable.get(entry[FILE_DIGEST] if signed else entry[PART_DIGEST])
        if source is not None and _link(source[0], directory / name, size):
            entry[CHECKSUM] = source[1][CHECKSUM]  # the same bytes: the same checksum
        else:
            if padded is None:
                write_new_file(directory / name, piece)
            else:
                write_new_file_direct(directory / name, padded[offset:][: _page_ceil(size)], size)
            entry[CHECKSUM] = xxhash.xxh3_64_hexdigest(piece)
            written += size
        entries[name] = entry
    return WrittenParts(entries, written)


def open_regular(path: str | Path, step: int | None) -> tuple[int, int]:
    """Open ``path`` for reading without following a symbolic link and without blocking on a
    FIFO; returns the descriptor and the file's size. Anything but a regular file is
    corruption."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise corrupt_file(path, step, "missing") from None
    except OSError as exc:
        if Path(path).is_symlink():
            raise corrupt_file(path, step, "a symbolic link, not a file of the step") from None
        raise CheckpointError(f"cannot open {path}: {exc}", path=path, step=step) from exc
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise corrupt_file(path, step, "not a regular file")
    return fd, info.st_size


def open_listed(path: str | Path, step: int | None, listed_size: int) -> int:
    """:func:`open_regular`, and its size checked against the manifest's; the descriptor."""
    fd, actual = open_regular(path, step)
    if actual != listed_size:
        os.close(fd)
        raise corrupt_file(path, step, f"size {actual} bytes, manifest says {listed_size}")
    return fd


class PartedFile:
    """Reads ranges of a data file stored as parts (``parts``: each part's path and size,
    in order), as ``pread`` reads a file: sizes checked, bytes unchecked (the caller checks
    each array's checksum)."""

    def __init__(self, parts: Sequence[tuple[Path, int]], step: int | None) -> None:
        self._parts = list(parts)
        self._step = step
        self._starts = np.cumsum([0] + [size for _, size in self._parts]).tolist()
        self.size = int(self._starts[-1])

    def pread(self, view: memoryview, offset: int) -> None:
        target = view.cast("B")
        if offset < 0 or offset + target.nbytes > self.size:
            raise corrupt_file(
                self._parts[0][0] if self._parts else "", self._step, "read past the end"
            )
        done = 0
        index = int(np.searchsorted(self._starts, offset, side="right")) - 1
        while done < target.nbytes:
            path, size = self._parts[index]
            inside = offset + done - self._starts[index]
            count = min(size - inside, target.nbytes - done)
            fd = open_listed(path, self._step, size)
            try:
                while count:
                    got = os.preadv(fd, [target[done : done + count]], inside)
                    if not got:
                        raise corrupt_file(path, self._step, "truncated while reading")
                    done, inside, count = done + got, inside + got, count - got
            finally:
                os.close(fd)
            index += 1


def read_parts(
    parts: Sequence[tuple[Path, int]], out: np.ndarray[Any, Any], step: int | None
) -> None:
    """Read every part, in order, into ``out`` (exactly their total size)."""
    reader = PartedFile(parts, step)
    if reader.size != out.nbytes:
        raise ValueError(f"{out.nbytes} bytes of room for {reader.size} bytes of parts")
    if reader.size:
        reader.pread(out.data.cast("B"), 0)


def _libc() -> Any:
    """libc's ``mmap``, to map at a fixed address."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    return libc.mmap


_MAP_FIXED = getattr(mmap, "MAP_FIXED", 0x10)  # Python < 3.13 does not export it
_mmap_fixed = _libc() if sys.platform.startswith("linux") else None


def _huge_pages(region: mmap.mmap, offset: int, length: int) -> None:
    """Advise huge pages for the parts mapped over ``region[offset:offset + length]``: a
    fault on a part not in the page cache reads it in the largest folios that fit it (one
    2 MiB folio for a 2 MiB part, which the mapping then takes with one page-table entry),
    and a fault maps a whole folio. (``MADV_WILLNEED`` would read the parts in 4 KiB pages,
    faulted in 64 KiB at a time ever after.) Nothing where the kernel has no such advice."""
    with contextlib.suppress(AttributeError, OSError):
        region.madvise(mmap.MADV_HUGEPAGE, offset, length)


def map_parts(
    parts: Sequence[tuple[Path, int]], step: int | None
) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """The parts side by side as one writable copy-on-write array: each part file mapped in
    place over its own range of one reserved region (no copy; the region, and every part's
    mapping, is released when the last view of the array goes). The region starts on a
    2 MiB boundary, so that a 2 MiB part at a 2 MiB offset maps with one page-table entry.
    Without ``MAP_FIXED`` (not Linux), or with parts that are not whole pages of this
    machine, the parts are read instead."""
    total = sum(size for _, size in parts)
    if _mmap_fixed is None or total == 0 or any(size % _PAGE for _, size in parts[:-1]):
        out = np.empty(total, dtype=np.uint8)
        read_parts(parts, out, step)
        return out
    room = -(-total // _PAGE) * _PAGE
    region = mmap.mmap(-1, room + MAX_PART, flags=mmap.MAP_PRIVATE)
    start = ctypes.addressof(ctypes.c_char.from_buffer(region))
    skip = -start % MAX_PART
    base = start + skip
    offset = 0
    for path, size in parts:
        fd = open_listed(path, step, size)
        length = -(-size // _PAGE) * _PAGE
        try:
            address = _mmap_fixed(
                base + offset,
                length,
                mmap.PROT_READ | mmap.PROT_WRITE,
                mmap.MAP_PRIVATE | _MAP_FIXED,
                fd,
                0,
            )
        finally:
            os.close(fd)
        if address != base + offset:
            raise CheckpointError(
                f"cannot map {path}: {os.strerror(ctypes.get_errno())}", path=path, step=step
            )
        offset += size
    _huge_pages(region, skip, room)
    return np.frombuffer(region, dtype=np.uint8, count=total, offset=skip)


def step_usage(step_dir: Path) -> tuple[int, int]:
    """``(own, shared)`` bytes of a step directory: its files no other step links (what
    deleting it frees), and those it shares (hard links with more than one name)."""
    own = shared = 0
    for entry in os.scandir(step_dir):
        info = entry.stat(follow_symlinks=False)
        if entry.is_file(follow_symlinks=False):
            if info.st_nlink > 1:
                shared += info.st_size
            else:
                own += info.st_size
    return own, shared
