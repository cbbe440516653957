"""Writing the files of one step into its temporary directory: each file written, fsynced
and checksummed in one pass, the manifest last.

```
step_000002500/
    manifest.json            written last (``manifest.py``): every file below, with its size
                             and xxh3-64 checksum (and SHA-256 when signed)
    <item>.data              every tensor and array of the item, raw bytes, 64-byte aligned
    <item>.data.000000 ...   or, for incremental saves, the same bytes as parts cut where
                             the arrays lie, each a hard link to an equal part of the
                             previous step when it has one (``_chunks.py``)
    <item>.index.json        the item's tree and array table (``index.py``)
    <item>.objects.pkl       only when the item has leaves that are neither arrays nor plain
                             scalars: those, cloudpickled together (``tree.py``)
```
The step writer writes a list of files (:func:`write_files`) and returns their manifest
entries; :func:`write_step_files` is that list for the staged items of one step, then the
manifest listing them. Guarantee: every file is fsynced before this returns (the directory
itself is fsynced by ``commit.py``). Cost: large files are hashed on a side thread while they
are written, and page-aligned data (whole data files, and new parts) goes to the device with
O_DIRECT (no copy into the page cache).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from alphatriangle.data.checkpoint._chunks import is_parted, shareable_parts, write_parts
from alphatriangle.data.checkpoint._fields import CHECKSUM, canonical
from alphatriangle.data.checkpoint._hash_thread import HashThread
from alphatriangle.data.checkpoint.catalog import StepCatalog
from alphatriangle.data.checkpoint.commit import write_new_file, write_new_file_direct
from alphatriangle.data.checkpoint.errors import CheckpointError
from alphatriangle.data.checkpoint.index import encode_index
from alphatriangle.data.checkpoint.layout import (
    MANIFEST_NAME,
    data_file,
    index_file,
    objects_file,
    step_dir_name,
)
from alphatriangle.data.checkpoint.manifest import build_manifest, read_manifest, seal
from alphatriangle.data.checkpoint.signing import FILE_DIGEST, ChunkedDigest
from alphatriangle.data.checkpoint.staging import StagedState

__all__ = [
    "StepFile",
    "item_data_file",
    "previous_parts",
    "write_files",
    "write_item_rest",
    "write_step_files",
]

logger = logging.getLogger(__name__)


@dataclass
class StepFile:
    """One file to write into a step: its name, its bytes, optionally the same bytes page
    aligned and padded to whole pages (then written with O_DIRECT), and regions (offset,
    size) whose own xxh3 digests are wanted (per-array checksums), put in ``region_digests``
    once written."""

    name: str
    data: memoryview | bytes
    padded: memoryview | None = None
    regions: list[tuple[int, int]] = field(default_factory=list)
    region_digests: list[str] = field(default_factory=list)


def _checksum(
    view: memoryview, hasher: Any, regions: list[tuple[int, int]], digests: list[str]
) -> None:
    hasher.update(view)
    digests.extend(xxhash.xxh3_64_hexdigest(view[o : o + n]) for o, n in regions)


class _Hashes:
    """A new file's checksum (and, ``signed``, its SHA-256 digest) computed while it is
    written: on a :class:`HashThread` when ``threaded``, else at once; the digest's chunks on
    the pool's threads. ``finish`` waits for both; ``entry`` is the file's manifest entry."""

    def __init__(self, file: StepFile, view: memoryview, *, signed: bool, threaded: bool):
        self._size = view.nbytes
        self._hasher = xxhash.xxh3_64()
        self._digest = ChunkedDigest() if signed else None
        if self._digest is not None:
            self._digest.update(view)
        self._thread: HashThread | None = None
        if threaded:
            self._thread = HashThread()
            self._thread.put(_checksum, view, self._hasher, file.regions, file.region_digests)
        else:
            _checksum(view, self._hasher, file.regions, file.region_digests)

    def finish(self) -> None:
        if self._thread is not None:
            self._thread.join()
        if self._digest is not None:
            self._digest.stop()

    def entry(self, **fields: Any) -> dict[str, Any]:
        entry: dict[str, Any] = {"size": self._size, CHECKSUM: self._hasher.hexdigest(), **fields}
        if self._digest is not None:
            entry[FILE_DIGEST] = self._digest.hexdigest()
        return entry


def item_data_file(name: str, staged: StagedState) -> StepFile:
    """The data file of item ``name``: its arrays' bytes, each array's region digested."""
    return StepFile(
        data_file(name),
        staged.data(),
        staged.page_padded_data(),
        regions=[(a.offset, a.nbytes) for a in staged.arrays],
    )


def write_item_rest(
    directory: Path, name: str, staged: StagedState, data: StepFile, *, signed: bool
) -> dict[str, Any]:
    """Write the index of item ``name`` (with the digests of its written ``data`` file's
    regions) and its pickled objects, if any; their manifest entries."""
    index = encode_index(staged.tree, staged.arrays, data.region_digests)
    later = [StepFile(index_file(name), index)]
    if staged.objects is not None:
        later.append(StepFile(objects_file(name), staged.objects))
    return write_files(directory, later, signed=signed)


def _write_file(directory: Path, file: StepFile, *, signed: bool) -> dict[str, Any]:
    """Write, fsync and checksum one new file; its manifest entry. Large files are hashed on
    other threads while they are written (all release the GIL). ``signed`` adds a SHA-256
    digest to the entry."""
    view = memoryview(file.data).cast("B")
    threaded = view.nbytes >= (1 << 20) or len(file.regions) > 64
    hashes = _Hashes(file, view, signed=signed, threaded=threaded)
    path = directory / file.name
    try:
        if file.padded is None:
            write_new_file(path, view)
        else:
            write_new_file_direct(path, file.padded, view.nbytes)
    finally:
        hashes.finish()
    return hashes.entry()


def _write_parted(
    directory: Path,
    file: StepFile,
    shareable: Mapping[str, tuple[Path, Mapping[str, Any]]],
    *,
    signed: bool,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write a data file as parts (``_chunks.py``), linking those the previous step has;
    the entries of its parts, and its own entry (size, digests of the whole, part count)."""
    view = memoryview(file.data).cast("B")
    hashes = _Hashes(file, view, signed=signed, threaded=True)
    try:
        parts = write_parts(
            directory,
            file.name,
            view,
            shareable,
            signed=signed,
            arrays=file.regions,
            padded=file.padded,
        )
    finally:
        hashes.finish()
    return parts.entries, hashes.entry(parts=len(parts.entries))


def previous_parts(
    catalog: StepCatalog, items: Iterable[str], signing_key: bytes | None
) -> dict[str, tuple[Path, Mapping[str, Any]]]:
    """The parts a new step may link (``_chunks.py``): those of the newest committed step,
    and of the newest holding each of ``items``, read from their manifests (with a signing
    key, only from manifests whose signature verifies). A step that cannot be read shares
    nothing: its parts are written again."""
    steps = {step for item in items for step in catalog.steps_holding(item)[:1]}
    newest = catalog.newest_committed()
    steps |= set() if newest is None else {newest[0]}
    shareable: dict[str, tuple[Path, Mapping[str, Any]]] = {}
    for step in sorted(steps):
        step_dir = catalog.directory / step_dir_name(step)
        try:
            manifest = read_manifest(step_dir, step, signing_key=signing_key)
        except (CheckpointError, OSError) as exc:
            logger.info("step %d shares no parts with the next save: %s", step, exc)
            continue
        shareable |= shareable_parts(step_dir, manifest.files, signed=signing_key is not None)
    return shareable


def write_files(
    directory: Path, files: Iterable[StepFile], *, signed: bool
) -> dict[str, dict[str, Any]]:
    """Write each of ``files`` into ``directory``, in order; their manifest entries by name."""
    return {file.name: _write_file(directory, file, signed=signed) for file in files}


def write_step_files(
    directory: Path,
    step: int,
    items: Mapping[str, StagedState],
    *,
    metrics: Mapping[str, float],
    wall_time: float,
    signing_key: bytes | None = None,
    incremental: bool | frozenset[str] = False,
    catalog: StepCatalog | None = None,
) -> dict[str, Any]:
    """Write every file of a step into ``directory`` (a temporary directory), manifest last.
    Every file is fsynced before this returns; the directory itself is not (commit does it).
    With ``signing_key``, files get SHA-256 digests and the manifest a signature. With
    ``incremental`` (every item, or the items named) and the ``catalog`` of committed steps,
    data files are written as parts, those equal to a part of the newest step linked
    (``_chunks.py``). Returns the manifest written."""
    signed = signing_key is not None
    parted_items = {name for name in items if is_parted(incremental, name)}
    shareable = None
    if parted_items and catalog is not None:
        shareable = previous_parts(catalog, parted_items, signing_key)
    entries: dict[str, Any] = {}
    parted: dict[str, Any] = {}
    for name, staged in items.items():
        data = item_data_file(name, staged)
        if shareable is None or name not in parted_items:
            entries |= write_files(directory, [data], signed=signed)
        else:
            parts, parted[data.name] = _write_parted(directory, data, shareable, signed=signed)
            entries |= parts
        entries |= write_item_rest(directory, name, staged, data, signed=signed)
    manifest = build_manifest(
        step,
        wall_time=wall_time,
        metrics=metrics,
        items=list(items),
        files=entries,
        parted=parted,
        signing_key=signing_key,
    )
    body = canonical(manifest)
    write_files(directory, [StepFile(MANIFEST_NAME, seal(body))], signed=False)
    manifest["checksum"] = xxhash.xxh3_64_hexdigest(body)
    return manifest
