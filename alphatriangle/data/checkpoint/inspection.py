"""Inspecting a step without restoring it: :func:`verify_step` checks every file and tree,
:func:`read_array_metadata` gives shapes and dtypes from the index alone.

Neither unpickles anything nor builds a tensor. Cost: ``verify_step`` one checksum pass over
every file in a reused buffer (nothing is kept); ``read_array_metadata`` one index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alphatriangle.data.checkpoint._verified_files import check_file
from alphatriangle.data.checkpoint.arrays import TORCH_DTYPES, ArraySpec
from alphatriangle.data.checkpoint.full_restore import check_item, decode_item
from alphatriangle.data.checkpoint.index import read_index
from alphatriangle.data.checkpoint.layout import objects_file
from alphatriangle.data.checkpoint.manifest import Manifest
from alphatriangle.data.checkpoint.tree import PickledObject, PickledPlaceholders

__all__ = ["ArrayMetadata", "PickledObject", "read_array_metadata", "verify_step"]


@dataclass(frozen=True)
class ArrayMetadata:
    """What :func:`read_array_metadata` says of one tensor or array, without reading it."""

    framework: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    device: str = "cpu"


def _placeholders(manifest: Manifest, item: str) -> PickledPlaceholders | None:
    return PickledPlaceholders() if objects_file(item) in manifest.files else None


def verify_step(step_dir: Path, manifest: Manifest, *, signing_key: bytes | None = None) -> None:
    """Check every listed file's size and digest, and every item's index and tree, without
    unpickling anything or building a tensor. Raises what ``read_item`` raises."""
    signed = signing_key is not None
    for name in manifest.files:
        check_file(step_dir / name, manifest.files[name], manifest.step, signed=signed)
    for item in manifest.items:
        index = read_index(step_dir, manifest, item, verify=False, signed=signed)
        arrays = [None] * len(index.specs)
        decode_item(
            step_dir,
            manifest,
            item,
            index.tree,
            arrays=arrays,
            objects=_placeholders(manifest, item),
        )


def read_array_metadata(
    step_dir: Path, manifest: Manifest, item: str, *, signing_key: bytes | None = None
) -> Any:
    """The item's tree with every tensor and array replaced by its :class:`ArrayMetadata`
    and every pickled leaf by a :class:`PickledObject`: shapes and dtypes, from the index
    alone (verified), without reading the data file or unpickling anything."""
    check_item(manifest, item)
    index = read_index(step_dir, manifest, item, verify=True, signed=signing_key is not None)
    arrays = [
        ArrayMetadata(s.framework, s.dtype, s.shape, _tensor_bytes(s), s.device)
        for s in index.specs
    ]
    return decode_item(
        step_dir, manifest, item, index.tree, arrays=arrays, objects=_placeholders(manifest, item)
    )


def _tensor_bytes(spec: ArraySpec) -> int:
    if spec.view_of is None:
        return spec.nbytes
    return math.prod(spec.shape) * TORCH_DTYPES[spec.dtype].itemsize
