"""The step directory format: what files a step holds and how each is verified.

```
step_000002500/
    manifest.json            written last: format version, step, wall time, metrics, items,
                             every file with its size and xxh3-64 checksum, library versions,
                             and a checksum of the manifest itself
    <item>.data              every tensor and array of the item, raw bytes, 64-byte aligned
    <item>.index.json        the item's tree (containers and scalars, JSON) and, per array,
                             framework, dtype, shape, offset, size, device
    <item>.objects.pkl       only when the item has leaves that are neither arrays nor plain
                             scalars: those, cloudpickled together
```
Reading weights and arrays needs ``manifest.json``, ``<item>.index.json`` and
``<item>.data`` alone: nothing is unpickled unless the item has pickled objects. This module
writes a step; ``reading.py`` reads and verifies one. With a signing key, every file entry
also carries a SHA-256 digest and the manifest a ``signature`` (see ``signing.py``).
"""

from __future__ import annotations

import errno
import json
import math
import os
import platform
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xxhash

from alphatriangle.data.checkpoint.layout import MANIFEST_NAME
from alphatriangle.data.checkpoint.signing import FILE_DIGEST, ChunkedDigest, manifest_signature
from alphatriangle.data.checkpoint.staging import StagedState

__all__ = [
    "CHECKSUM",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "Manifest",
    "canonical",
    "seal",
    "unseal",
    "write_step_files",
]

FORMAT_NAME = "alphatriangle-checkpoint"
FORMAT_VERSION = 2  # 2: compact dict nodes ("da", "oda") in the tree; 1 is read too
CHECKSUM = "xxh3_64"
_WRITE_CHUNK = 64 << 20  # a multiple of the page: O_DIRECT writes stay aligned
_O_DIRECT: int = getattr(os, "O_DIRECT", 0)


@dataclass(frozen=True)
class Manifest:
    """The parsed ``manifest.json`` of one committed step."""

    step: int
    wall_time: float
    metrics: Mapping[str, float]
    items: tuple[str, ...]
    files: Mapping[str, Mapping[str, Any]]
    raw: Mapping[str, Any]


def _versions() -> dict[str, str]:
    from alphatriangle import __version__

    return {
        "alphatriangle": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _encode_metric(value: float) -> float | str:
    value = float(value)
    return value if math.isfinite(value) else repr(value)  # "nan", "inf", "-inf"


def canonical(data: Mapping[str, Any]) -> bytes:
    """The canonical JSON bytes of ``data``: sorted keys, no spaces, no NaN."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _write_all(fd: int, view: memoryview) -> None:
    while view.nbytes:
        view = view[os.write(fd, view[:_WRITE_CHUNK]) :]


def _write_direct(path: Path, padded: memoryview, size: int) -> bool:
    """Write ``padded`` (page-aligned, whole pages) with O_DIRECT, then trim to ``size``.
    False when the file system refuses O_DIRECT (tmpfs, some network file systems)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | _O_DIRECT, 0o644)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise
    try:
        _write_all(fd, padded)
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


def _checksum(
    view: memoryview, hasher: Any, regions: list[tuple[int, int]], digests: list[str]
) -> None:
    hasher.update(view)
    digests.extend(xxhash.xxh3_64_hexdigest(view[o : o + n]) for o, n in regions)


def _write_file(
    path: Path,
    data: memoryview | bytes,
    padded: memoryview | None = None,
    *,
    signed: bool,
    regions: list[tuple[int, int]] | None = None,
    region_digests: list[str] | None = None,
) -> dict[str, Any]:
    """Write, fsync and checksum one new file. Large files are hashed on other threads while
    they are written (all release the GIL); given ``padded`` (the same bytes, page aligned and
    padded to whole pages), the write goes straight to the device with O_DIRECT, sparing the
    CPU a copy into the page cache. ``signed`` adds a SHA-256 digest to the entry. For each
    (offset, size) of ``regions``, the xxh3 of those bytes is appended to ``region_digests``
    (per-array checksums, for partial restores)."""
    view = memoryview(data).cast("B")
    hasher = xxhash.xxh3_64()
    digest = ChunkedDigest() if signed else None
    if digest is not None:
        digest.update(view)  # its chunks hash on the pool's threads meanwhile
    hashing = None
    arguments = (view, hasher, regions or [], region_digests if region_digests is not None else [])
    if view.nbytes >= (1 << 20) or len(arguments[2]) > 64:
        hashing = threading.Thread(target=_checksum, args=arguments, name="checksum")
        hashing.start()
    else:
        _checksum(*arguments)
    try:
        if padded is None or not _O_DIRECT or not _write_direct(path, padded, view.nbytes):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                _write_all(fd, view)
                os.fsync(fd)
            finally:
                os.close(fd)
    finally:
        if hashing is not None:
            hashing.join()
        if digest is not None:
            digest.stop()
    entry = {"size": view.nbytes, CHECKSUM: hasher.hexdigest()}
    if digest is not None:
        entry[FILE_DIGEST] = digest.hexdigest()
    return entry


def write_step_files(
    directory: Path,
    step: int,
    items: Mapping[str, StagedState],
    *,
    metrics: Mapping[str, float],
    wall_time: float,
    signing_key: bytes | None = None,
) -> dict[str, Any]:
    """Write every file of a step into ``directory`` (a temporary directory), manifest last.
    Every file is fsynced before this returns; the directory itself is not (commit does it).
    With ``signing_key``, files get SHA-256 digests and the manifest a signature. Returns the
    manifest written."""
    signed = signing_key is not None
    files: dict[str, Any] = {}
    for name, staged in items.items():
        array_digests: list[str] = []
        files[f"{name}.data"] = _write_file(
            directory / f"{name}.data",
            staged.data(),
            staged.page_padded_data(),
            signed=signed,
            regions=[(a.offset, a.nbytes) for a in staged.arrays],
            region_digests=array_digests,
        )
        arrays = [
            a.to_json() if a.view_of is not None else {**a.to_json(), CHECKSUM: digest}
            for a, digest in zip(staged.arrays, array_digests, strict=True)
        ]
        index = {"tree": staged.tree, "arrays": arrays}
        files[f"{name}.index.json"] = _write_file(
            directory / f"{name}.index.json", canonical(index), signed=signed
        )
        if staged.objects is not None:
            files[f"{name}.objects.pkl"] = _write_file(
                directory / f"{name}.objects.pkl", staged.objects, signed=signed
            )
    manifest: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "step": step,
        "wall_time": wall_time,
        "metrics": {str(k): _encode_metric(v) for k, v in metrics.items()},
        "items": sorted(items),
        "files": files,
        "versions": _versions(),
    }
    if signing_key is not None:
        manifest["signature"] = manifest_signature(manifest, signing_key, canonical(manifest))
    body = canonical(manifest)
    _write_file(directory / MANIFEST_NAME, seal(body), signed=False)
    manifest["checksum"] = xxhash.xxh3_64_hexdigest(body)
    return manifest


_SEAL = b',"checksum":"'


def seal(body: bytes) -> bytes:
    """The manifest's bytes: its canonical JSON with the checksum of exactly those bytes
    appended as a last key, so verifying needs no re-serialisation."""
    return body[:-1] + _SEAL + xxhash.xxh3_64_hexdigest(body).encode() + b'"}'


def unseal(data: bytes) -> bool:
    """Whether ``data`` ends with the checksum of the bytes before it (see :func:`seal`)."""
    cut = data.rfind(_SEAL)
    if cut < 0 or not data.endswith(b'"}'):
        return False
    claimed = data[cut + len(_SEAL) : -2]
    return xxhash.xxh3_64_hexdigest(data[:cut] + b"}").encode() == claimed
