"""The full restore of one item: every array of the item from one pass over its data file.

Steps 3-7 of the restore pipeline (``restore.py``): 3) the index (``index.py``) 4) map and
verify: the data file mapped copy-on-write (``restore_mode="mmap"``: its checksum pass starts
at once, on a side thread, while the index is read) or read into fresh memory hashing each
chunk while the next is read (``"copy"``) 5) build arrays: CPU tensors and arrays as views of
those bytes, CUDA tensors streamed through pinned chunks (``_array_building.py``); nothing
mapped is returned before its digest matched 6) unpickle the item's objects, if it has any:
through the allow-list of ``_safe_unpickling.py`` by default, as they are with
``weights_only=False`` or a verified signature, never with ``weights_only=True`` 7) decode
the tree (``tree.py``). Steps 5 and, for an item without objects, 7 run while the checksum pass
does; nothing is unpickled or returned before it matched.

Guarantee: every byte used was verified; any violation raises
:class:`~alphatriangle.data.checkpoint.errors.CheckpointCorruptError` naming the file. Cost:
one checksum pass over the data file, overlapped with the rest; no copy on the CPU when
mapped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from alphatriangle.data.checkpoint._array_building import arrays_in, make_view
from alphatriangle.data.checkpoint._devices import DeviceMap
from alphatriangle.data.checkpoint._fields import CHECKSUM
from alphatriangle.data.checkpoint._safe_unpickling import RefusedGlobal, unsafe_object_error
from alphatriangle.data.checkpoint._verified_files import (
    data_entry,
    data_mismatch,
    map_data,
    read_data,
    read_listed,
)
from alphatriangle.data.checkpoint.errors import (
    CheckpointCorruptError,
    WeightsOnlyError,
    corrupt_file,
)
from alphatriangle.data.checkpoint.index import read_index
from alphatriangle.data.checkpoint.layout import data_file, index_file, objects_file
from alphatriangle.data.checkpoint.manifest import Manifest
from alphatriangle.data.checkpoint.mapping import PinnedChunks
from alphatriangle.data.checkpoint.signing import FILE_DIGEST
from alphatriangle.data.checkpoint.tree import (
    JsonTree,
    TreeError,
    decode_tree,
    object_paths,
    unpickle_objects,
)

__all__ = [
    "ItemRead",
    "ReadOptions",
    "check_item",
    "decode_item",
    "item_objects",
    "read_item",
    "refuse_objects",
]


@dataclass(frozen=True)
class ReadOptions:
    """How one restore reads, the same in every reader it goes through (built once per
    restore): ``verify`` the checksums, ``weights_only`` (None: objects through the
    allow-list; True: refused; False: unpickled as they are), the ``signing_key`` the
    manifest's signature was checked with (a signed step is trusted), and ``map_location``
    (``torch.load``'s meaning, see ``_devices.py``)."""

    verify: bool = True
    weights_only: bool | None = None
    signing_key: bytes | None = None
    map_location: Any = None

    @property
    def signed(self) -> bool:
        """Whether the step's signature was verified (files then read by their digest)."""
        return self.signing_key is not None


class ItemRead(NamedTuple):
    """What one reader reads: ``item`` of the leased step at ``step_dir``, whose
    ``manifest`` was read (and its signature checked) with ``read``'s signing key, read as
    ``read`` says. Built once per step by ``restore.restore_step``; a reader that falls back
    to the whole item passes it on to :func:`read_item`."""

    step_dir: Path
    manifest: Manifest
    item: str
    read: ReadOptions


def check_item(manifest: Manifest, item: str) -> None:
    """KeyError naming the items the step has, when it has no ``item``."""
    if item not in manifest.items:
        raise KeyError(f"step {manifest.step} has no item {item!r} (it has {manifest.items})")


def decode_item(
    step_dir: Path, manifest: Manifest, item: str, tree: JsonTree, *, arrays: Any, objects: Any
) -> Any:
    """:func:`~alphatriangle.data.checkpoint.tree.decode_tree`, a malformed tree reported as
    the corruption of the item's index."""
    try:
        return decode_tree(tree, arrays, objects)
    except TreeError as exc:
        raise corrupt_file(step_dir / index_file(item), manifest.step, str(exc)) from None


def refuse_objects(step_dir: Path, manifest: Manifest, item: str, tree: JsonTree) -> None:
    """Raise :class:`WeightsOnlyError` naming where pickled objects sit, if the item has any
    (``weights_only=True``)."""
    name = objects_file(item)
    if name in manifest.files:
        where: list[str] = []
        object_paths(tree, item, where)
        raise WeightsOnlyError(
            f"step {manifest.step} holds pickled objects ({', '.join(where) or name}) "
            f"in {step_dir / name}; weights_only=True refuses to unpickle them",
            path=step_dir / name,
            step=manifest.step,
        )


def item_objects(
    step_dir: Path, manifest: Manifest, item: str, arrays: list[Any], read: ReadOptions
) -> list[Any] | None:
    """Read and unpickle an item's objects; None when it has none. Through the allow-list
    unless ``read.weights_only`` is False or the step's signature verified (``read.signed``):
    a verified signature is trusted. An object that does not unpickle is reported as a
    corrupt step naming the file (its cause chained), a refused global as
    :class:`UnsafeObjectError`."""
    name = objects_file(item)
    if name not in manifest.files:
        return None
    restricted = read.weights_only is None and not read.signed
    data = read_listed(step_dir, manifest, name, verify=read.verify, signed=read.signed)
    try:
        return unpickle_objects(data, arrays, restricted=restricted)
    except RefusedGlobal as refused:
        raise unsafe_object_error(refused, step_dir / name, manifest.step) from None
    except CheckpointCorruptError:
        raise  # an array it refers to failed its checksum
    except Exception as exc:
        why = f"cannot unpickle its objects ({type(exc).__name__}: {exc})"
        raise corrupt_file(step_dir / name, manifest.step, why) from exc


def read_item(source: ItemRead, *, mode: str = "mmap", pinned: PinnedChunks | None = None) -> Any:
    """Rebuild one item's state tree; see the module docstring for ``mode`` and the order of
    the reads.

    Raises :class:`CheckpointCorruptError` naming the file for any violation;
    :class:`WeightsOnlyError` naming where the objects sit when ``weights_only`` and the
    item holds pickled objects (nothing is unpickled)."""
    step_dir, manifest, item, read = source
    check_item(manifest, item)
    map_location = DeviceMap.of(read.map_location)
    verify, signed = read.verify, read.signed
    data_name = data_file(item)
    # Mapped: the checksum pass over the data starts now and runs while the index is read.
    arena, digest = None, None
    if mode == "mmap":
        arena, digest = map_data(step_dir, manifest, data_name, verify=verify, signed=signed)
    try:
        index = read_index(step_dir, manifest, item, verify=verify, signed=signed)
        if read.weights_only:
            refuse_objects(step_dir, manifest, item, index.tree)
    except BaseException:
        if digest is not None:  # not waited for: the pass ends, its thread goes back to the pool
            digest.close()
        raise
    if arena is None:
        arena = read_data(step_dir, manifest, data_name, verify=verify, signed=signed)
    specs = index.specs
    has_objects = objects_file(item) in manifest.files
    restored: Any = None
    try:
        arrays = arrays_in(
            arena, specs, step_dir, manifest.step, map_location=map_location, pinned=pinned
        )
        for position, spec in enumerate(specs):
            if spec.view_of is not None:  # storages first: views are made of them
                arrays[position] = make_view(arrays[spec.view_of], spec)
        if not has_objects:  # while the checksum pass runs; returned only once it matched
            tree = index.tree
            restored = decode_item(step_dir, manifest, item, tree, arrays=arrays, objects=None)
    finally:  # nothing mapped is returned (or unpickled) before its digest matched
        intact = digest is None or digest.hexdigest() == data_entry(manifest, data_name).get(
            FILE_DIGEST if signed else CHECKSUM
        )
    if not intact:
        raise data_mismatch(step_dir, manifest, data_name, signed=signed)
    if has_objects:
        objects = item_objects(step_dir, manifest, item, arrays, read)
        restored = decode_item(step_dir, manifest, item, index.tree, arrays=arrays, objects=objects)
    return restored
