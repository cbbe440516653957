"""In-place restore: one item of a step read into a template tree the caller owns.

``restore(step, target=tree)`` runs 1) plan: the item's index and tree are read and matched
against ``tree`` (keys, lengths, kinds, shapes and dtypes), naming the first key that differs
in a :class:`CheckpointError` before anything of ``tree`` is written 2) fill: each tensor and
array of ``tree`` receives its bytes in place, on its own device, with no new allocation for
it: contiguous CPU targets are read into straight from the data file (``pread``), split
between two threads, each hashing every chunk it just read while it is in cache (per-array
checksums); other targets (CUDA, non-contiguous, views in the step)
are read apart and ``copy_``-ed 3) set: the other leaves (scalars, strings, unpickled
objects) are put into their containers (a tuple, being immutable, is rebuilt), and ``tree``
is returned.

Verification is that of a restore: every byte used is checked (per-array checksums; a step
written without them, or a signed step, is read whole and verified as ``read_item`` does,
then copied in). On a corrupt step the arrays of ``tree`` may hold part of its bytes.

The plan is a list of (target leaf, array position): a later planner for sharded tensors
(DTensor) can produce its own entries and reuse the fill.
"""

from __future__ import annotations

import threading
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xxhash

from alphatriangle.data.checkpoint._array_building import ArrayReader
from alphatriangle.data.checkpoint._verified_files import close_data, open_data
from alphatriangle.data.checkpoint.arrays import BYTE_COPIED, TORCH_DTYPES, ArraySpec
from alphatriangle.data.checkpoint.errors import CheckpointError
from alphatriangle.data.checkpoint.full_restore import (
    ItemRead,
    decode_item,
    item_objects,
    read_item,
    refuse_objects,
)
from alphatriangle.data.checkpoint.index import Index, read_index
from alphatriangle.data.checkpoint.layout import data_file, objects_file
from alphatriangle.data.checkpoint.tree import PickledObject, PickledPlaceholders

__all__ = ["restore_into"]


@dataclass(frozen=True)
class _Slot:
    """Stands for array ``position`` of the item while the trees are matched."""

    position: int


@dataclass(frozen=True)
class _Where:
    step_dir: Path
    step: int
    item: str

    def mismatch(self, path: str, why: str) -> CheckpointError:
        return CheckpointError(
            f"restore(target=...): {path} {why} (step {self.step}, item {self.item!r})",
            path=self.step_dir,
            step=self.step,
        )


@dataclass
class _Plan:
    """What to fill: (target leaf, array position) pairs, found by matching the trees."""

    specs: list[ArraySpec]
    where: _Where
    fills: list[tuple[torch.Tensor | np.ndarray[Any, Any], int]] = field(default_factory=list)

    def match(self, target: Any, stored: Any, path: str) -> None:
        """Check that ``target`` has the shape of ``stored``; collect the arrays to fill."""
        if isinstance(stored, _Slot):  # a DTensor planner would plan its shards here
            self.match_array(target, stored.position, path)
            return
        if isinstance(target, (torch.Tensor, np.ndarray)):
            raise self.where.mismatch(
                path, f"is a {type(target).__name__}, the step holds {_describe(stored)} there"
            )
        if isinstance(stored, dict):
            if not isinstance(target, MutableMapping):
                raise self.where.mismatch(
                    path, f"is a {type(target).__name__}, the step holds a dict"
                )
            for key in stored:
                if key not in target:
                    raise self.where.mismatch(f"{path}[{key!r}]", "is missing from the target")
            for key in target:
                if key not in stored:
                    raise self.where.mismatch(f"{path}[{key!r}]", "is not in the step")
            for key, value in stored.items():
                self.match(target[key], value, f"{path}[{key!r}]")
        elif isinstance(stored, (list, tuple)):
            kind = type(stored).__name__
            if not isinstance(target, (list, tuple)) or len(target) != len(stored):
                raise self.where.mismatch(
                    path,
                    f"is {_describe(target)} of length {_length(target)}, the step holds a "
                    f"{kind} of length {len(stored)}",
                )
            for i, (mine, theirs) in enumerate(zip(target, stored, strict=True)):
                self.match(mine, theirs, f"{path}[{i}]")
        elif isinstance(stored, PickledObject):
            pass  # an unpickled object replaces whatever the target holds there
        elif isinstance(target, (MutableMapping, list, tuple)):
            raise self.where.mismatch(
                path, f"is a {type(target).__name__}, the step holds {_describe(stored)}"
            )

    def match_array(self, target: Any, position: int, path: str) -> None:
        spec = self.specs[position]
        shape = tuple(spec.shape)
        if spec.framework == "torch":
            if not isinstance(target, torch.Tensor):
                raise self.where.mismatch(path, f"is {_describe(target)}, the step holds a tensor")
            dtype: object = TORCH_DTYPES[spec.dtype]
            mine: tuple[object, tuple[int, ...]] = (target.dtype, tuple(target.shape))
        else:
            if not isinstance(target, np.ndarray):
                raise self.where.mismatch(
                    path, f"is {_describe(target)}, the step holds a numpy array"
                )
            dtype = np.dtype(spec.dtype)
            mine = (target.dtype, tuple(target.shape))
        if mine != (dtype, shape):
            raise self.where.mismatch(
                path,
                f"is {mine[0]} of shape {mine[1]} in the target, "
                f"{dtype} of shape {shape} in the step",
            )
        if isinstance(target, np.ndarray) and not target.flags.writeable:
            raise self.where.mismatch(path, "is a read-only numpy array: it cannot be filled")
        self.fills.append((target, position))


def restore_into(target: Any, source: ItemRead) -> Any:
    """Fill ``target`` from ``item`` of the step (see the module docstring); returns it.
    Each array is filled where it is: a restore with a target has no ``map_location``."""
    step_dir, manifest, item, read = source
    verify = read.verify
    index = read_index(step_dir, manifest, item, verify=verify, signed=read.signed)
    where = _Where(step_dir, manifest.step, item)
    slots = [_Slot(p) for p in range(len(index.specs))]
    has_objects = objects_file(item) in manifest.files
    placeholders = PickledPlaceholders() if has_objects else None
    stored = decode_item(step_dir, manifest, item, index.tree, arrays=slots, objects=placeholders)
    plan = _Plan(index.specs, where)
    plan.match(target, stored, item)
    if read.weights_only:
        refuse_objects(step_dir, manifest, item, index.tree)
    if read.signed or (verify and any(index.checksums[p] is None for _, p in plan.fills)):
        # The whole item, verified as a plain restore does, then copied in.
        whole = read_item(source, mode="mmap")
        with torch.no_grad():
            return _set_leaves(target, whole, copy=True)
    data_path = step_dir / data_file(item)
    fd = open_data(step_dir, manifest, data_file(item))
    try:
        arrays = ArrayReader(
            fd, data_path, index, manifest.step, finish=lambda t, _: t, verify=verify
        )
        _fill(plan, index, arrays, verify=verify)
        objects = item_objects(step_dir, manifest, item, arrays, read)
    finally:
        close_data(fd)
    values = decode_item(step_dir, manifest, item, index.tree, arrays=slots, objects=objects)
    return _set_leaves(target, values, copy=False)


def _describe(value: object) -> str:
    if isinstance(value, _Slot):
        return "a tensor or array"
    if isinstance(value, PickledObject):
        return "a pickled object"
    return type(value).__name__


def _length(value: object) -> str:
    return str(len(value)) if isinstance(value, (list, tuple)) else "-"


def _direct_view(
    target: torch.Tensor | np.ndarray[Any, Any],
) -> np.ndarray[Any, np.dtype[np.uint8]] | None:
    """The bytes of ``target`` to read into, when it is a contiguous CPU leaf; else None."""
    if isinstance(target, np.ndarray):
        return target.reshape(-1).view(np.uint8) if target.flags.c_contiguous else None
    if target.device.type != "cpu" or not target.is_contiguous():
        return None
    return target.detach().reshape(-1).view(torch.uint8).numpy()


_CHUNK = 4 << 20  # read, then hashed while it is still in the CPU's cache


def _fill(plan: _Plan, index: Index, arrays: ArrayReader, *, verify: bool) -> None:
    """Put every planned array into its target: contiguous CPU targets read straight from
    the file on two threads (each hashes what it just read, while it is in cache), the
    others read apart and copied in."""
    specs = index.specs
    direct, apart = [], []
    for target, position in plan.fills:
        view = None if specs[position].view_of is not None else _direct_view(target)
        if view is not None and len(view) == specs[position].nbytes:
            if len(view):
                direct.append((position, view))
        else:
            apart.append((target, position))
    failed = _read_checked(direct, arrays, index, verify=verify)
    if failed is not None:
        arrays.refuse(failed)
    with torch.no_grad():
        for target, position in apart:
            _copy_into(target, arrays[position])


def _read_checked(
    direct: list[tuple[int, np.ndarray[Any, np.dtype[np.uint8]]]],
    arrays: ArrayReader,
    index: Index,
    *,
    verify: bool,
) -> int | None:
    """Read each array's bytes into its view, split between this thread and a helper by
    size; the lowest position whose checksum did not match, or None."""
    shares: list[list[tuple[int, np.ndarray[Any, np.dtype[np.uint8]]]]] = [[], []]
    loads = [0, 0]
    for entry in sorted(direct, key=lambda entry: -len(entry[1])):
        lighter = loads.index(min(loads))
        shares[lighter].append(entry)
        loads[lighter] += len(entry[1])
    failed: list[int] = []
    errors: list[BaseException] = []

    def read(share: list[tuple[int, np.ndarray[Any, np.dtype[np.uint8]]]]) -> None:
        try:
            for position, view in sorted(share, key=lambda entry: index.specs[entry[0]].offset):
                offset = index.specs[position].offset
                hasher = xxhash.xxh3_64() if verify else None
                for start in range(0, len(view), _CHUNK):
                    piece = view[start : start + _CHUNK].data
                    arrays.pread(piece, offset + start)
                    if hasher is not None:
                        hasher.update(piece)
                if hasher is not None and hasher.hexdigest() != index.checksums[position]:
                    failed.append(position)
        except BaseException as exc:  # raised on the caller's thread below
            errors.append(exc)

    helper = threading.Thread(target=read, args=(shares[1],), name="fill", daemon=True)
    if shares[1]:
        helper.start()
    try:
        read(shares[0])
    finally:
        if shares[1]:
            helper.join()
    if errors:
        raise errors[0]
    return min(failed) if failed else None


def _copy_into(target: Any, source: Any) -> None:
    if isinstance(target, np.ndarray):
        np.copyto(target, source, casting="no")
    elif target.dtype in BYTE_COPIED:  # no copy kernel: the same bytes, as uint8
        target.view(torch.uint8).copy_(source.view(torch.uint8))
    else:
        target.copy_(source)


def _set_leaves(target: Any, values: Any, *, copy: bool) -> Any:
    """Put ``values`` (a tree shaped like ``target``, checked) into ``target``: arrays are
    copied in when ``copy`` (else they were filled already), other leaves are set."""
    if isinstance(target, (torch.Tensor, np.ndarray)):
        if copy:
            _copy_into(target, values)
        return target
    if isinstance(values, dict) and isinstance(target, MutableMapping):
        for key, value in values.items():
            target[key] = _set_leaves(target[key], value, copy=copy)
        return target
    if isinstance(values, (list, tuple)) and isinstance(target, list):
        for i, value in enumerate(values):
            target[i] = _set_leaves(target[i], value, copy=copy)
        return target
    if isinstance(values, (list, tuple)) and isinstance(target, tuple):
        filled = [_set_leaves(t, v, copy=copy) for t, v in zip(target, values, strict=True)]
        return tuple(filled) if type(target) is tuple else type(target)(*filled)
    return values  # a scalar, a string or an unpickled object: set as the step holds it
