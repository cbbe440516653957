"""The index, ``<item>.index.json``: one item's tree and array table, in both directions.

Written by the step writer (:func:`encode_index`), read strictly on restore
(:func:`read_index`): framework ``torch`` or ``numpy``; dtypes from an allow-list
(``arrays.TORCH_DTYPES``; numpy dtypes without objects or fields); devices parsed by a strict
pattern; ``nbytes == prod(shape) * itemsize``; views inside their storage; every array inside
the data file, which must end where the last array ends; per-array checksums hex. Any
violation raises :class:`~alphatriangle.data.checkpoint.errors.CheckpointCorruptError` naming
the file. The tree itself is checked when it is decoded (``tree.py``).

Cost: one small verified read and a JSON parse; one check per array. Restoring the same step
again (or any step whose index has the same bytes) skips the parse: the last few parsed
indexes are kept, keyed by their bytes themselves (hashed, then compared in full), with the
data file's name and size they were checked against; a hit is bytes identical to ones
already parsed and checked, so a changed file is never served stale. The read and its
verification against the manifest happen on every restore.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alphatriangle.data.checkpoint._fields import (
    CHECKSUM,
    HEX_PATTERNS,
    ParsedCache,
    canonical,
    is_int,
    parse_json,
)
from alphatriangle.data.checkpoint._verified_files import data_entry, read_listed
from alphatriangle.data.checkpoint.arrays import GRAD_DTYPES, TORCH_DTYPES, ArraySpec, numpy_dtype
from alphatriangle.data.checkpoint.errors import corrupt_file
from alphatriangle.data.checkpoint.layout import data_file, index_file
from alphatriangle.data.checkpoint.manifest import Manifest
from alphatriangle.data.checkpoint.tree import JsonTree

__all__ = ["Index", "encode_index", "read_index"]

_MAX_DIMS = 64
_DEVICE_RE = re.compile(r"^(cpu|(cuda|mps|xpu)(:[0-9]{1,4})?)$")


@dataclass(frozen=True)
class Index:
    """One item's parsed index; shared by the restores that read the same bytes (see the
    module docstring), so read only: callers never change its tree or lists."""

    tree: Any
    specs: list[ArraySpec]
    checksums: list[str | None]  # per array (steps written before they existed: None)


def encode_index(tree: JsonTree, specs: list[ArraySpec], checksums: list[str]) -> bytes:
    """The index's bytes: the tree, and each array's spec with its checksum (a view, whose
    bytes are its storage's, has none)."""
    arrays = [
        s.to_json() if s.view_of is not None else {**s.to_json(), CHECKSUM: digest}
        for s, digest in zip(specs, checksums, strict=True)
    ]
    return canonical({"tree": tree, "arrays": arrays})


def _parse_spec(entry: object) -> ArraySpec:
    """One entry of the index's array table, checked field by field (ValueError says what is
    wrong)."""
    if not isinstance(entry, dict):
        raise ValueError("not an object")
    framework: Any = entry.get("framework")
    dtype_name: Any = entry.get("dtype")
    shape: Any = entry.get("shape")
    view = "view_of" in entry
    offset: Any = 0 if view else entry.get("offset")
    nbytes: Any = 0 if view else entry.get("nbytes")
    if not isinstance(shape, list) or len(shape) > _MAX_DIMS:
        raise ValueError(f"shape {shape!r:.80} is not a list of at most {_MAX_DIMS} sizes")
    if not all(is_int(d) and d >= 0 for d in shape):
        raise ValueError(f"shape {shape!r:.80} has a size that is not a non-negative int")
    if view:
        return _parse_view(entry, shape)
    if not (is_int(offset) and is_int(nbytes) and offset >= 0 and nbytes >= 0):
        raise ValueError(f"offset {offset!r} or nbytes {nbytes!r} is not a non-negative int")
    if framework == "torch":
        if not isinstance(dtype_name, str) or dtype_name not in TORCH_DTYPES:
            raise ValueError(f"torch dtype {dtype_name!r:.80} is not one this format holds")
        itemsize = TORCH_DTYPES[dtype_name].itemsize
        device = entry.get("device", "cpu")
        if not isinstance(device, str) or not _DEVICE_RE.match(device):
            raise ValueError(f"device {device!r:.80} is not a device name")
        requires_grad = entry.get("requires_grad", False)
        parameter = entry.get("parameter", False)
        _check_grad(requires_grad, parameter, dtype_name)
    elif framework == "numpy":
        dtype = numpy_dtype(dtype_name) if isinstance(dtype_name, str) else None
        if dtype is None:
            raise ValueError(f"numpy dtype {dtype_name!r:.80} is not one this format holds")
        itemsize = dtype.itemsize
        device, requires_grad, parameter = "cpu", False, False
    else:
        raise ValueError(f"framework {framework!r:.80} is neither torch nor numpy")
    if nbytes != math.prod(shape) * itemsize:
        raise ValueError(f"nbytes {nbytes} is not the size of shape {shape} of {dtype_name}")
    storage = entry.get("storage", False)
    if type(storage) is not bool or (
        storage and (framework != "torch" or dtype_name != "uint8" or len(shape) != 1)
    ):
        raise ValueError("a storage entry must be a 1-d torch uint8 array")
    return ArraySpec(
        framework=framework,
        dtype=dtype_name,
        shape=tuple(shape),
        offset=offset,
        nbytes=nbytes,
        device=device,
        requires_grad=requires_grad,
        parameter=parameter,
        storage=storage,
    )


def _check_grad(requires_grad: object, parameter: object, dtype_name: str) -> None:
    if type(requires_grad) is not bool or type(parameter) is not bool:
        raise ValueError("requires_grad and parameter must be booleans")
    if requires_grad and dtype_name not in GRAD_DTYPES:
        raise ValueError(f"requires_grad is set on a tensor of {dtype_name}, which cannot have it")


def _parse_view(entry: dict[str, Any], shape: list[int]) -> ArraySpec:
    """A view entry: a torch tensor placed in a shared storage entry (checked against it by
    :func:`_check_views`)."""
    dtype_name: Any = entry.get("dtype")
    view_of: Any = entry.get("view_of")
    stride: Any = entry.get("stride")
    storage_offset: Any = entry.get("storage_offset")
    device = entry.get("device", "cpu")
    requires_grad, parameter = entry.get("requires_grad", False), entry.get("parameter", False)
    if entry.get("framework") != "torch" or not isinstance(dtype_name, str):
        raise ValueError("a view entry must be a torch tensor")
    if dtype_name not in TORCH_DTYPES:
        raise ValueError(f"torch dtype {dtype_name!r:.80} is not one this format holds")
    if not is_int(view_of) or view_of < 0:
        raise ValueError(f"view_of {view_of!r:.40} is not an array index")
    if (
        not isinstance(stride, list)
        or len(stride) != len(shape)
        or not all(is_int(s) and s >= 0 for s in stride)
    ):
        raise ValueError(f"stride {stride!r:.80} does not fit shape {shape}")
    if not is_int(storage_offset) or storage_offset < 0:
        raise ValueError(f"storage_offset {storage_offset!r:.40} is not a non-negative int")
    if not isinstance(device, str) or not _DEVICE_RE.match(device):
        raise ValueError(f"device {device!r:.80} is not a device name")
    _check_grad(requires_grad, parameter, dtype_name)
    return ArraySpec(
        framework="torch",
        dtype=dtype_name,
        shape=tuple(shape),
        offset=0,
        nbytes=0,
        device=device,
        requires_grad=requires_grad,
        parameter=parameter,
        view_of=view_of,
        stride=tuple(stride),
        storage_offset=storage_offset,
    )


def _check_views(specs: list[ArraySpec]) -> None:
    """Every view refers to a storage entry and stays inside it (ValueError otherwise)."""
    for position, spec in enumerate(specs):
        if spec.view_of is None:
            continue
        assert spec.stride is not None
        if spec.view_of >= len(specs) or not specs[spec.view_of].storage:
            raise ValueError(f"array {position} is a view of {spec.view_of}, not of a storage")
        if math.prod(spec.shape) == 0:
            continue
        last = spec.storage_offset + sum(
            (d - 1) * s for d, s in zip(spec.shape, spec.stride, strict=True)
        )
        itemsize = TORCH_DTYPES[spec.dtype].itemsize
        if (last + 1) * itemsize > specs[spec.view_of].nbytes:
            raise ValueError(f"array {position} reaches past the end of its storage")


_PARSED_ENTRIES = 8  # indexes kept parsed: a few items of a few steps
_PARSED_MAX_BYTES = 1 << 20  # larger indexes (tens of thousands of arrays) are parsed each time
_parsed: ParsedCache[tuple[bytes, str, int], Index] = ParsedCache(_PARSED_ENTRIES)


def parse_index(data: bytes, path: Path, step: int, *, data_name: str, data_size: int) -> Index:
    """An index's bytes parsed and checked; ``data_size`` is the listed size of the data
    file ``data_name``, which must end where the last array ends. Bytes identical to ones
    parsed before (with the same data file name and size) return that parse (read only)."""
    key = (data, data_name, data_size)
    index = _parsed.get(key)
    if index is None:
        index = _parse_index(data, path, step, data_name=data_name, data_size=data_size)
        if len(data) <= _PARSED_MAX_BYTES:
            _parsed.put(key, index)
    return index


def _parse_index(data: bytes, path: Path, step: int, *, data_name: str, data_size: int) -> Index:
    index = parse_json(data, path, step)
    if not isinstance(index, dict) or not isinstance(index.get("arrays"), list):
        raise corrupt_file(path, step, "not an index (no array table)")
    if "tree" not in index:
        raise corrupt_file(path, step, "not an index (no tree)")
    specs, checksums = [], []
    for position, entry in enumerate(index["arrays"]):
        try:
            specs.append(_parse_spec(entry))
        except ValueError as exc:
            raise corrupt_file(path, step, f"array {position}: {exc}") from None
        checksum = entry.get(CHECKSUM)
        if checksum is not None and not (
            isinstance(checksum, str) and HEX_PATTERNS[CHECKSUM].match(checksum)
        ):
            raise corrupt_file(path, step, f"array {position}: bad {CHECKSUM}")
        checksums.append(checksum)
    try:
        _check_views(specs)
    except ValueError as exc:
        raise corrupt_file(path, step, str(exc)) from None
    end = max((s.offset + s.nbytes for s in specs), default=0)
    if end != data_size:
        raise corrupt_file(
            path,
            step,
            f"its arrays end at byte {end}, but {data_name} is listed with {data_size} bytes",
        )
    return Index(index["tree"], specs, checksums)


def read_index(
    step_dir: Path, manifest: Manifest, item: str, *, verify: bool, signed: bool
) -> Index:
    """The item's index, read (verified against the manifest) and parsed."""
    name, data_name = index_file(item), data_file(item)
    data = read_listed(step_dir, manifest, name, verify=verify, signed=signed)
    size = data_entry(manifest, data_name)["size"]
    return parse_index(data, step_dir / name, manifest.step, data_name=data_name, data_size=size)
