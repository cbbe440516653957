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
``<item>.data`` alone: nothing is unpickled unless the item has pickled objects.
"""

from __future__ import annotations

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

from alphatriangle.data.errors import CheckpointCorruptError
from alphatriangle.data.layout import MANIFEST_NAME
from alphatriangle.data.staging import (
    ArraySpec,
    StagedState,
    decode_tree,
    unpickle_objects,
)

__all__ = [
    "FORMAT_VERSION",
    "Manifest",
    "read_item",
    "read_manifest",
    "write_step_files",
]

FORMAT_NAME = "alphatriangle-checkpoint"
FORMAT_VERSION = 1
_CHECKSUM = "xxh3_64"
_READ_CHUNK = 64 << 20


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


def _canonical(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _write_file(path: Path, data: memoryview | bytes) -> dict[str, Any]:
    """Write, fsync and checksum one new file; large files are hashed on a second thread
    while they are written (both release the GIL)."""
    view = memoryview(data).cast("B")
    hasher = xxhash.xxh3_64()
    hashing = None
    if view.nbytes >= (1 << 20):
        hashing = threading.Thread(target=hasher.update, args=(view,), name="checksum")
        hashing.start()
    else:
        hasher.update(view)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        remaining = view
        while remaining.nbytes:
            written = os.write(fd, remaining)
            remaining = remaining[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
        if hashing is not None:
            hashing.join()
    return {"size": view.nbytes, _CHECKSUM: hasher.hexdigest()}


def write_step_files(
    directory: Path,
    step: int,
    items: Mapping[str, StagedState],
    *,
    metrics: Mapping[str, float],
    wall_time: float,
) -> dict[str, Any]:
    """Write every file of a step into ``directory`` (a temporary directory), manifest last.
    Every file is fsynced before this returns; the directory itself is not (commit does it).
    Returns the manifest written."""
    files: dict[str, Any] = {}
    for name, staged in items.items():
        files[f"{name}.data"] = _write_file(directory / f"{name}.data", staged.data())
        index = {"tree": staged.tree, "arrays": [a.to_json() for a in staged.arrays]}
        files[f"{name}.index.json"] = _write_file(
            directory / f"{name}.index.json", _canonical(index)
        )
        if staged.objects is not None:
            files[f"{name}.objects.pkl"] = _write_file(
                directory / f"{name}.objects.pkl", staged.objects
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
    manifest["checksum"] = xxhash.xxh3_64_hexdigest(_canonical(manifest))
    _write_file(directory / MANIFEST_NAME, _canonical(manifest))
    return manifest


def _corrupt(path: Path, step: int | None, why: str) -> CheckpointCorruptError:
    return CheckpointCorruptError(f"corrupt checkpoint file {path}: {why}", path=path, step=step)


def read_manifest(step_dir: Path, step: int | None = None) -> Manifest:
    """Parse and verify ``manifest.json``; raises :class:`CheckpointCorruptError` naming it
    when it is missing, does not parse, or fails its own checksum."""
    path = step_dir / MANIFEST_NAME
    try:
        raw = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise _corrupt(path, step, "missing") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise _corrupt(path, step, f"not valid JSON ({exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
        raise _corrupt(path, step, "not a checkpoint manifest")
    if raw.get("format_version", 0) > FORMAT_VERSION:
        raise _corrupt(
            path,
            step,
            f"format version {raw.get('format_version')} is newer than this library "
            f"reads ({FORMAT_VERSION}); upgrade alphatriangle",
        )
    claimed = raw.pop("checksum", None)
    if claimed != xxhash.xxh3_64_hexdigest(_canonical(raw)):
        raise _corrupt(path, step, "manifest checksum mismatch (edited or damaged)")
    raw["checksum"] = claimed
    try:
        return Manifest(
            step=int(raw["step"]),
            wall_time=float(raw["wall_time"]),
            metrics={k: float(v) for k, v in raw["metrics"].items()},
            items=tuple(raw["items"]),
            files=raw["files"],
            raw=raw,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise _corrupt(path, step, f"missing or malformed field ({exc!r})") from None


class _VerifiedReader:
    """Reads one listed file sequentially, checking its size and (optionally) checksum."""

    def __init__(self, path: Path, entry: Mapping[str, Any], step: int, verify: bool) -> None:
        self.path = path
        self.step = step
        self.expected_size = int(entry["size"])
        self.expected_sum = entry.get(_CHECKSUM)
        self.hasher = xxhash.xxh3_64() if verify else None
        try:
            self.file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed in finish()
        except FileNotFoundError:
            raise _corrupt(path, step, "missing") from None
        actual = os.fstat(self.file.fileno()).st_size
        if actual != self.expected_size:
            self.file.close()
            raise _corrupt(path, step, f"size {actual} bytes, manifest says {self.expected_size}")
        self.position = 0

    def read_into(self, view: memoryview) -> None:
        view = view.cast("B")
        filled = 0
        while filled < view.nbytes:
            got = self.file.readinto(view[filled : filled + _READ_CHUNK])
            if not got:
                raise _corrupt(self.path, self.step, "truncated while reading")
            filled += got
        if self.hasher is not None:
            self.hasher.update(view)
        self.position += filled

    def read_rest(self) -> bytes:
        data = bytearray(self.expected_size - self.position)
        self.read_into(memoryview(data))
        return bytes(data)

    def finish(self) -> None:
        self.file.close()
        if self.hasher is not None and self.hasher.hexdigest() != self.expected_sum:
            raise _corrupt(self.path, self.step, "checksum mismatch")


def _read_small(step_dir: Path, manifest: Manifest, name: str, verify: bool) -> bytes:
    entry = manifest.files.get(name)
    if entry is None:
        raise _corrupt(step_dir / MANIFEST_NAME, manifest.step, f"does not list {name}")
    reader = _VerifiedReader(step_dir / name, entry, manifest.step, verify)
    try:
        data = reader.read_rest()
    finally:
        reader.file.close()
    reader.finish()
    return data


def _empty_array(spec: ArraySpec) -> tuple[Any, memoryview]:
    """A new array to read ``spec`` into, and a byte view of its memory."""
    if spec.framework == "torch":
        dtype = getattr(torch, spec.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown torch dtype {spec.dtype!r}")
        raw = torch.empty(spec.nbytes, dtype=torch.uint8)
        tensor = (
            raw.view(dtype).view(spec.shape)
            if spec.nbytes
            else torch.empty(spec.shape, dtype=dtype)
        )
        return tensor, raw.numpy().data
    array = np.empty(spec.shape, dtype=np.dtype(spec.dtype))
    return array, array.reshape(-1).view(np.uint8).data


def _finish_tensor(tensor: torch.Tensor, spec: ArraySpec, map_location: Any) -> torch.Tensor:
    device = torch.device(map_location) if map_location is not None else torch.device(spec.device)
    if device.type != "cpu":
        tensor = tensor.to(device)
    if spec.parameter:
        return torch.nn.Parameter(tensor, requires_grad=spec.requires_grad)
    if spec.requires_grad:
        tensor.requires_grad_(True)
    return tensor


def read_item(
    step_dir: Path,
    manifest: Manifest,
    item: str,
    *,
    verify: bool = True,
    map_location: Any = None,
) -> Any:
    """Rebuild one item's state tree. Raises :class:`CheckpointCorruptError` naming the file
    on any missing file, size or checksum mismatch, or unreadable index."""
    if item not in manifest.items:
        raise KeyError(f"step {manifest.step} has no item {item!r} (it has {manifest.items})")
    index_name = f"{item}.index.json"
    index_bytes = _read_small(step_dir, manifest, index_name, verify)
    try:
        index = json.loads(index_bytes)
        specs = [ArraySpec.from_json(a) for a in index["arrays"]]
        tree = index["tree"]
    except (ValueError, KeyError, TypeError) as exc:
        raise _corrupt(step_dir / index_name, manifest.step, f"unreadable index ({exc})") from None

    data_name = f"{item}.data"
    entry = manifest.files.get(data_name)
    if entry is None:
        raise _corrupt(step_dir / MANIFEST_NAME, manifest.step, f"does not list {data_name}")
    reader = _VerifiedReader(step_dir / data_name, entry, manifest.step, verify)
    arrays: list[Any] = []
    try:
        padding = bytearray(64)
        for spec in specs:
            gap = spec.offset - reader.position
            if gap < 0 or spec.offset + spec.nbytes > reader.expected_size:
                raise _corrupt(step_dir / index_name, manifest.step, "array outside data file")
            if gap > len(padding):
                padding = bytearray(gap)
            reader.read_into(memoryview(padding)[:gap])
            array, view = _empty_array(spec)
            reader.read_into(view)
            arrays.append(array)
        reader.read_into(memoryview(bytearray(reader.expected_size - reader.position)))
    finally:
        reader.file.close()
    reader.finish()

    arrays = [
        _finish_tensor(a, s, map_location) if s.framework == "torch" else a
        for a, s in zip(arrays, specs, strict=True)
    ]
    objects = None
    objects_name = f"{item}.objects.pkl"
    if objects_name in manifest.files:
        objects = unpickle_objects(_read_small(step_dir, manifest, objects_name, verify), arrays)
    try:
        return decode_tree(tree, arrays, objects)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise _corrupt(step_dir / index_name, manifest.step, f"unreadable tree ({exc})") from None
