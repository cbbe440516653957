"""The partial restore (``restore(select=...)``): only the selected subtrees of one item,
reading only the bytes of their arrays.

1) the index 2) the selected paths found in the tree without decoding it (``tree.child``),
and the arrays under them (``tree.references``; a view brings its storage) 3) those arrays
read with as few ``pread`` calls as their layout allows, each verified by its own checksum on
the side thread (``_array_building.ArrayReader``) 4) pickled objects unpickled only when a
selected subtree holds one 5) each subtree decoded, returned as nested dicts along its path.

A step without per-array checksums, or any read with a signing key (xxh3 of a part is no
signature), reads and verifies the whole item instead (``full_restore.py``). Cost: the
selected bytes, plus the index.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from alphatriangle.data.checkpoint._array_building import ArrayReader, finish_tensor
from alphatriangle.data.checkpoint._devices import DeviceMap
from alphatriangle.data.checkpoint._verified_files import close_data, open_data
from alphatriangle.data.checkpoint.arrays import ArraySpec
from alphatriangle.data.checkpoint.errors import WeightsOnlyError
from alphatriangle.data.checkpoint.full_restore import (
    ItemRead,
    check_item,
    decode_item,
    item_objects,
    read_item,
)
from alphatriangle.data.checkpoint.index import read_index
from alphatriangle.data.checkpoint.layout import data_file, objects_file
from alphatriangle.data.checkpoint.tree import child, references

__all__ = ["Selector", "read_selected"]

Selector = str | int | tuple[Any, ...]


def read_selected(source: ItemRead, select: Sequence[Selector]) -> dict[Any, Any]:
    """The selected subtrees of one item, as nested dicts along their paths: ``"model"`` is
    the top-level key ``model``, ``("optimizer", "state")`` a nested one, an int an index of
    a list (see the module docstring). Raises KeyError naming a path that the item does not
    have, and what ``read_item`` raises."""
    step_dir, manifest, item, read = source
    check_item(manifest, item)
    map_location = DeviceMap.of(read.map_location)  # checked before anything is read
    index = read_index(step_dir, manifest, item, verify=read.verify, signed=read.signed)
    paths = [tuple(s) if isinstance(s, tuple) else (s,) for s in select]
    nodes = []
    for path in paths:
        node = index.tree
        for depth, key in enumerate(path):
            try:
                node = child(node, key)
            except KeyError:
                raise KeyError(
                    f"step {manifest.step} item {item!r} has no {path[: depth + 1]}"
                ) from None
        nodes.append(node)
    needed: set[int] = set()
    holds_objects = any([references(node, needed) for node in nodes])
    for position in list(needed):  # a view needs its storage
        if 0 <= position < len(index.specs) and index.specs[position].view_of is not None:
            needed.add(index.specs[position].view_of)  # type: ignore[arg-type]
    if read.signed or (read.verify and any(index.checksums[i] is None for i in needed)):
        whole = read_item(source)
        return _assemble(paths, [_pick(whole, path) for path in paths])
    objects_name = objects_file(item)
    if holds_objects and read.weights_only:
        raise WeightsOnlyError(
            f"the selection holds pickled objects ({step_dir / objects_name}); "
            "weights_only=True refuses to unpickle them",
            path=step_dir / objects_name,
            step=manifest.step,
        )
    data_path = step_dir / data_file(item)
    fd = open_data(step_dir, manifest, data_file(item))
    try:

        def finish(tensor: torch.Tensor, spec: ArraySpec) -> torch.Tensor:
            return finish_tensor(tensor, spec, map_location, step_dir, manifest.step)

        arrays = ArrayReader(fd, data_path, index, manifest.step, finish=finish, verify=read.verify)
        arrays.prefetch(needed)
        objects = None
        if holds_objects:
            objects = item_objects(step_dir, manifest, item, arrays, read)
        values = [
            decode_item(step_dir, manifest, item, node, arrays=arrays, objects=objects)
            for node in nodes
        ]
    finally:
        close_data(fd)
    return _assemble(paths, values)


def _pick(tree: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _assemble(paths: list[tuple[Any, ...]], values: list[Any]) -> dict[Any, Any]:
    result: dict[Any, Any] = {}
    for path, value in zip(paths, values, strict=True):
        node = result
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return result
