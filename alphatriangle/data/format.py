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

import errno
import json
import math
import os
import platform
import queue
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xxhash

from alphatriangle.data.errors import CheckpointCorruptError, CheckpointError
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
_HASH_CHUNK = 16 << 20  # restore hashes chunk k while it reads chunk k + 1
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


def _canonical(data: Mapping[str, Any]) -> bytes:
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


def _write_file(
    path: Path, data: memoryview | bytes, padded: memoryview | None = None
) -> dict[str, Any]:
    """Write, fsync and checksum one new file. Large files are hashed on a second thread
    while they are written (both release the GIL); given ``padded`` (the same bytes, page
    aligned and padded to whole pages), the write goes straight to the device with O_DIRECT,
    sparing the CPU a copy into the page cache."""
    view = memoryview(data).cast("B")
    hasher = xxhash.xxh3_64()
    hashing = None
    if view.nbytes >= (1 << 20):
        hashing = threading.Thread(target=hasher.update, args=(view,), name="checksum")
        hashing.start()
    else:
        hasher.update(view)
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
        files[f"{name}.data"] = _write_file(
            directory / f"{name}.data", staged.data(), staged.page_padded_data()
        )
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
    body = _canonical(manifest)
    manifest["checksum"] = xxhash.xxh3_64_hexdigest(body)
    _write_file(directory / MANIFEST_NAME, _seal(body))
    return manifest


_SEAL = b',"checksum":"'


def _seal(body: bytes) -> bytes:
    """The manifest's bytes: its canonical JSON with the checksum of exactly those bytes
    appended as a last key, so verifying needs no re-serialisation."""
    return body[:-1] + _SEAL + xxhash.xxh3_64_hexdigest(body).encode() + b'"}'


def _unseal(data: bytes) -> bool:
    """Whether ``data`` ends with the checksum of the bytes before it (see :func:`_seal`)."""
    cut = data.rfind(_SEAL)
    if cut < 0 or not data.endswith(b'"}'):
        return False
    claimed = data[cut + len(_SEAL) : -2]
    return xxhash.xxh3_64_hexdigest(data[:cut] + b"}").encode() == claimed


def _corrupt(path: str | Path, step: int | None, why: str) -> CheckpointCorruptError:
    return CheckpointCorruptError(f"corrupt checkpoint file {path}: {why}", path=path, step=step)


def read_manifest(step_dir: Path, step: int | None = None) -> Manifest:
    """Parse and verify ``manifest.json``; raises :class:`CheckpointCorruptError` naming it
    when it is missing, does not parse, or fails its own checksum."""
    # A str path: this runs for every step when retention reads 10,000 manifests.
    path = os.path.join(step_dir, MANIFEST_NAME)  # noqa: PTH118
    try:
        with open(path, "rb") as file:
            data = file.read()
        raw = json.loads(data)
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
    if not _unseal(data):
        raise _corrupt(path, step, "manifest checksum mismatch (edited or damaged)")
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


class _PipelinedHash:
    """xxh3 of a sequence of buffers, computed on a second thread as they arrive, so that
    hashing overlaps with reading (both release the GIL). The buffers must stay unchanged
    until :meth:`hexdigest` returns."""

    def __init__(self) -> None:
        self._hasher = xxhash.xxh3_64()
        self._queue: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="checksum", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (view := self._queue.get()) is not None:
            self._hasher.update(view)

    def update(self, view: memoryview) -> None:
        self._queue.put(view)

    def stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def hexdigest(self) -> str:
        self.stop()
        return str(self._hasher.hexdigest())


class _VerifiedReader:
    """Reads one listed file sequentially, checking its size and (optionally) checksum.
    Always :meth:`close` it; :meth:`finish` verifies the checksum."""

    def __init__(self, path: Path, entry: Mapping[str, Any], step: int, verify: bool) -> None:
        self.path = path
        self.step = step
        self.expected_size = int(entry["size"])
        self.expected_sum = entry.get(_CHECKSUM)
        try:
            self.file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed in close()
        except FileNotFoundError:
            raise _corrupt(path, step, "missing") from None
        actual = os.fstat(self.file.fileno()).st_size
        if actual != self.expected_size:
            self.file.close()
            raise _corrupt(path, step, f"size {actual} bytes, manifest says {self.expected_size}")
        self.hasher = _PipelinedHash() if verify else None
        self.position = 0

    def read_into(self, view: memoryview) -> None:
        """Fill ``view`` (which must not change until :meth:`finish`) with the next bytes."""
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

    def close(self) -> None:
        self.file.close()
        if self.hasher is not None:
            self.hasher.stop()

    def finish(self) -> None:
        self.close()
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
        reader.close()
    reader.finish()
    return data


def _array_in(arena: np.ndarray[Any, np.dtype[np.uint8]], spec: ArraySpec) -> Any:
    """The array ``spec`` describes, as a view of ``arena`` (the data file's bytes).

    A torch tensor gets a storage of its own covering just its bytes (saving it writes only
    those); the memory is shared and returned when the last array of the item is freed.
    """
    if spec.framework == "torch":
        dtype = getattr(torch, spec.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown torch dtype {spec.dtype!r}")
        if spec.nbytes == 0:
            return torch.empty(spec.shape, dtype=dtype)
        raw = torch.frombuffer(arena, dtype=torch.uint8, count=spec.nbytes, offset=spec.offset)
        return raw.view(dtype).view(spec.shape)
    region = arena[spec.offset : spec.offset + spec.nbytes]
    return region.view(np.dtype(spec.dtype)).reshape(spec.shape)


def _finish_tensor(
    tensor: torch.Tensor, spec: ArraySpec, map_location: Any, step_dir: Path, step: int
) -> torch.Tensor:
    device = torch.device(map_location) if map_location is not None else torch.device(spec.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError(
            f"step {step} holds tensors saved on {spec.device}, and this process has no CUDA "
            "device; pass map_location='cpu' to restore them on the CPU",
            path=step_dir,
            step=step,
        )
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
    try:
        # One allocation for the whole file (numpy asks for huge pages: cheap first touch),
        # read in chunks so that hashing one overlaps reading the next.
        arena = np.empty(reader.expected_size, dtype=np.uint8)
        for start in range(0, reader.expected_size, _HASH_CHUNK):
            reader.read_into(arena.data[start : start + _HASH_CHUNK])
    finally:
        reader.close()
    reader.finish()
    arrays = []
    for spec in specs:
        if spec.offset < 0 or spec.nbytes < 0 or spec.offset + spec.nbytes > arena.nbytes:
            raise _corrupt(step_dir / index_name, manifest.step, "array outside data file")
        try:
            array = _array_in(arena, spec)
        except (ValueError, TypeError, RuntimeError) as exc:
            raise _corrupt(
                step_dir / index_name, manifest.step, f"bad array entry ({exc})"
            ) from None
        if spec.framework == "torch":
            array = _finish_tensor(array, spec, map_location, step_dir, manifest.step)
        arrays.append(array)
    objects = None
    objects_name = f"{item}.objects.pkl"
    if objects_name in manifest.files:
        objects = unpickle_objects(_read_small(step_dir, manifest, objects_name, verify), arrays)
    try:
        return decode_tree(tree, arrays, objects)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise _corrupt(step_dir / index_name, manifest.step, f"unreadable tree ({exc})") from None
