"""Reading one committed step strictly: never wrong data, never a hang, never an unclear error.

Every byte read is checked before it is used, and any violation raises
:class:`~alphatriangle.data.checkpoint.errors.CheckpointCorruptError` naming the file:

- files are opened without following symbolic links and must be regular files (a FIFO, a
  directory or a link in a step is corruption, not a hang or a read outside the step); their
  size must match the manifest before anything is allocated;
- the manifest: its own checksum, field types (``format_version`` an int, ``step`` the
  directory's step, items and file names plain names, sizes non-negative ints, checksums hex);
- the index: framework ``torch`` or ``numpy``; dtypes from an allow-list
  (``arrays.TORCH_DTYPES``; numpy dtypes without objects or fields); devices parsed by a
  strict pattern; ``nbytes == prod(shape) * itemsize``; every array inside the data file,
  which must end where the last array ends; tree references in range; nesting bounded;
- pickled objects: never unpickled with ``weights_only=True``; by default through the
  allow-list of ``_safe_unpickling.py`` (a refused global raises ``UnsafeObjectError``); as
  they are with ``weights_only=False`` or a verified signature; an object that does not
  unpickle is reported as such, naming the file.

With a signing key (``signing.py``) the manifest's HMAC and every file's SHA-256 are checked
too, and an unsigned or tampered step raises
:class:`~alphatriangle.data.checkpoint.errors.CheckpointSignatureError`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import queue
import re
import stat
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xxhash

from alphatriangle.data.checkpoint._array_checks import ArrayChecks
from alphatriangle.data.checkpoint._devices import DeviceMap
from alphatriangle.data.checkpoint._interrupts import wait_interruptibly
from alphatriangle.data.checkpoint._safe_unpickling import RefusedGlobal, unsafe_object_error
from alphatriangle.data.checkpoint.arrays import GRAD_DTYPES, TORCH_DTYPES, ArraySpec, numpy_dtype
from alphatriangle.data.checkpoint.errors import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointSignatureError,
    WeightsOnlyError,
)
from alphatriangle.data.checkpoint.format import (
    CHECKSUM,
    FORMAT_NAME,
    FORMAT_VERSION,
    Manifest,
    canonical,
    unseal,
)
from alphatriangle.data.checkpoint.layout import MANIFEST_NAME
from alphatriangle.data.checkpoint.mapping import (
    PinnedChunks,
    map_data_file,
    stream_to_device,
)
from alphatriangle.data.checkpoint.signing import (
    DIGEST_CHUNK,
    FILE_DIGEST,
    ChunkedDigest,
    manifest_signature,
    signatures_match,
)
from alphatriangle.data.checkpoint.tree import TreeError, decode_tree, unpickle_objects

__all__ = [
    "ArrayMetadata",
    "PickledObject",
    "read_array_metadata",
    "read_item",
    "read_manifest",
    "read_selected",
    "verify_step",
]

MAX_MANIFEST_BYTES = 64 << 20
_READ_CHUNK = 64 << 20
_HASH_CHUNK = DIGEST_CHUNK  # restore hashes chunk k while it reads chunk k + 1
_MAX_DIMS = 64
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}$")
_ITEM_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,127}$")
_HEX_RE = {CHECKSUM: re.compile(r"^[0-9a-f]{16}$"), FILE_DIGEST: re.compile(r"^[0-9a-f]{64}$")}
_DEVICE_RE = re.compile(r"^(cpu|(cuda|mps|xpu)(:[0-9]{1,4})?)$")
_NON_FINITE = ("nan", "inf", "-inf")


def _corrupt(path: str | Path, step: int | None, why: str) -> CheckpointCorruptError:
    return CheckpointCorruptError(f"corrupt checkpoint file {path}: {why}", path=path, step=step)


def _mismatch(path: str | Path, step: int, *, signed: bool) -> CheckpointCorruptError:
    if signed:
        return CheckpointSignatureError(
            f"tampered checkpoint file {path}: its {FILE_DIGEST} is not the signed one",
            path=path,
            step=step,
        )
    return _corrupt(path, step, f"checksum mismatch ({CHECKSUM})")


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _parse_json(data: bytes, path: str | Path, step: int | None) -> Any:
    try:
        return json.loads(data, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise _corrupt(path, step, f"not valid JSON ({type(exc).__name__}: {exc})") from None


def _is_int(value: object) -> bool:
    return type(value) is int


def _is_number(value: object) -> bool:
    return type(value) is int or (type(value) is float and math.isfinite(value))


def _physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _open_regular(path: str | Path, step: int | None) -> tuple[int, int]:
    """Open ``path`` for reading without following a symbolic link and without blocking on a
    FIFO; returns the descriptor and the file's size. Anything but a regular file is
    corruption."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _corrupt(path, step, "missing") from None
    except OSError as exc:
        if Path(path).is_symlink():
            raise _corrupt(path, step, "a symbolic link, not a file of the step") from None
        raise CheckpointError(f"cannot open {path}: {exc}", path=path, step=step) from exc
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise _corrupt(path, step, "not a regular file")
    return fd, info.st_size


def _check_allocatable(path: str | Path, step: int | None, size: int) -> None:
    if size > _physical_memory():
        raise CheckpointError(
            f"{path} holds {size} bytes, more than this machine's memory "
            f"({_physical_memory()} bytes): it cannot be restored here",
            path=path,
            step=step,
        )


def read_manifest(
    step_dir: str | Path, step: int | None = None, *, signing_key: bytes | None = None
) -> Manifest:
    """Parse and verify ``manifest.json`` (see the module docstring). ``step``, when given,
    is the step the directory's name says: the manifest must say the same. With
    ``signing_key``, the signature is checked too."""
    # A str path: this runs for every step when retention reads 10,000 manifests.
    path = os.path.join(step_dir, MANIFEST_NAME)  # noqa: PTH118
    fd, size = _open_regular(path, step)
    try:
        if size > MAX_MANIFEST_BYTES:
            raise _corrupt(path, step, f"{size} bytes, more than a manifest can be")
        with os.fdopen(fd, "rb", closefd=False) as file:
            data = file.read()
    finally:
        os.close(fd)
    raw = _parse_json(data, path, step)
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
        raise _corrupt(path, step, "not a checkpoint manifest")
    version: Any = raw.get("format_version")
    if not _is_int(version) or version < 1:
        raise _corrupt(path, step, f"format_version {version!r} is not a positive integer")
    if version > FORMAT_VERSION:
        raise _corrupt(
            path,
            step,
            f"format version {version} is newer than this library reads ({FORMAT_VERSION}); "
            "upgrade alphatriangle",
        )
    if not unseal(data):
        raise _corrupt(path, step, "manifest checksum mismatch (edited or damaged)")
    manifest = _parse_manifest(raw, path, step)
    if signing_key is not None:
        _check_signature(raw, signing_key, path, manifest.step)
    return manifest


def _parse_manifest(raw: dict[str, Any], path: str, step: int | None) -> Manifest:
    def bad(why: str) -> CheckpointCorruptError:
        return _corrupt(path, step, why)

    said: Any = raw.get("step")
    if not _is_int(said) or said < 0:
        raise bad(f"step {said!r} is not a non-negative integer")
    if step is not None and said != step:
        raise bad(f"says step {said}, but lies in the directory of step {step}")
    if not _is_number(raw.get("wall_time")):
        raise bad(f"wall_time {raw.get('wall_time')!r} is not a finite number")
    metrics = raw.get("metrics")
    if not isinstance(metrics, dict):
        raise bad("metrics is not an object")
    for name, value in metrics.items():
        if not (_is_number(value) or value in _NON_FINITE):
            raise bad(f"metric {name!r} is {value!r}, not a number")
    items = raw.get("items")
    if (
        not isinstance(items, list)
        or not all(isinstance(i, str) and _ITEM_RE.match(i) for i in items)
        or len(set(items)) != len(items)
    ):
        raise bad(f"items {items!r:.200} is not a list of distinct item names")
    files = raw.get("files")
    if not isinstance(files, dict):
        raise bad("files is not an object")
    for name, entry in files.items():
        if not _NAME_RE.match(name) or name == MANIFEST_NAME:
            raise bad(f"lists {name!r:.100}, which is not a plain file name of a step")
        if not isinstance(entry, dict) or not _is_int(entry.get("size")) or entry["size"] < 0:
            raise bad(f"the entry of {name} has no valid size")
        for digest, pattern in _HEX_RE.items():
            value = entry.get(digest)
            if (digest == CHECKSUM or value is not None) and not (
                isinstance(value, str) and pattern.match(value)
            ):
                raise bad(f"the entry of {name} has no valid {digest}")
    for item in items:
        for suffix in (".data", ".index.json"):
            if item + suffix not in files:
                raise bad(f"item {item!r} has no {item + suffix}")
    return Manifest(
        step=said,
        wall_time=float(raw["wall_time"]),
        metrics={k: float(v) for k, v in metrics.items()},
        items=tuple(items),
        files=files,
        raw=raw,
    )


def _check_signature(raw: dict[str, Any], key: bytes, path: str, step: int) -> None:
    unsigned = {k: v for k, v in raw.items() if k not in ("signature", "checksum")}
    if "signature" not in raw:
        raise CheckpointSignatureError(
            f"{path} is not signed, and a signing key is set: refusing step {step}",
            path=path,
            step=step,
        )
    expected = manifest_signature(unsigned, key, canonical(unsigned))
    if not signatures_match(expected, raw["signature"]):
        raise CheckpointSignatureError(
            f"{path}: the signature does not match (tampered, or signed with another key): "
            f"refusing step {step}",
            path=path,
            step=step,
        )
    for name, entry in raw["files"].items():
        if FILE_DIGEST not in entry:
            raise CheckpointSignatureError(
                f"{path}: {name} has no {FILE_DIGEST} digest in a signed manifest",
                path=path,
                step=step,
            )


class _PipelinedHash:
    """A digest of a sequence of buffers, computed on a second thread as they arrive, so
    that hashing overlaps with reading (both release the GIL). The buffers must stay
    unchanged until :meth:`hexdigest` returns."""

    def __init__(self, hasher: Any) -> None:
        self._hasher = hasher
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
            wait_interruptibly(self._joined)  # a long pass: a Ctrl-C need not wait for it

    def _joined(self, timeout: float | None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def hexdigest(self) -> str:
        self.stop()
        return str(self._hasher.hexdigest())


class _InlineHash:
    """xxh3 computed in the caller's thread (small files)."""

    def __init__(self) -> None:
        self._hasher = xxhash.xxh3_64()

    def update(self, view: memoryview) -> None:
        self._hasher.update(view)

    def stop(self) -> None:
        pass

    def hexdigest(self) -> str:
        return str(self._hasher.hexdigest())


_Hasher = _PipelinedHash | _InlineHash | ChunkedDigest


def _file_hasher(*, signed: bool, threaded: bool) -> _Hasher:
    """A file's digest as the manifest lists it: the chunked SHA-256 of signed steps, else
    xxh3, on a thread of its own when ``threaded``."""
    if signed:
        return ChunkedDigest()
    return _PipelinedHash(xxhash.xxh3_64()) if threaded else _InlineHash()


class _VerifiedReader:
    """Reads one listed file sequentially, checking its size and (when ``verify``) its
    digest: xxh3, or SHA-256 when ``signed``. Always :meth:`close` it; :meth:`finish`
    verifies the digest."""

    def __init__(
        self, path: Path, entry: Mapping[str, Any], step: int, *, verify: bool, signed: bool
    ) -> None:
        self.path = path
        self.step = step
        self.expected_size = int(entry["size"])
        self.digest_name = FILE_DIGEST if signed else CHECKSUM
        self.expected_digest = entry.get(self.digest_name)
        fd, actual = _open_regular(path, step)
        if actual != self.expected_size:
            os.close(fd)
            raise _corrupt(path, step, f"size {actual} bytes, manifest says {self.expected_size}")
        self.file = os.fdopen(fd, "rb", buffering=0)
        # A thread pays off only when there is a next chunk to read meanwhile.
        threaded = self.expected_size > _READ_CHUNK
        self.hasher = _file_hasher(signed=signed, threaded=threaded) if verify else None
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
        _check_allocatable(self.path, self.step, self.expected_size - self.position)
        data = bytearray(self.expected_size - self.position)
        self.read_into(memoryview(data))
        return bytes(data)

    def close(self) -> None:
        self.file.close()
        if self.hasher is not None:
            self.hasher.stop()

    def finish(self) -> None:
        self.close()
        if self.hasher is not None and self.hasher.hexdigest() != self.expected_digest:
            raise _mismatch(self.path, self.step, signed=self.digest_name == FILE_DIGEST)


def _read_small(
    step_dir: Path, manifest: Manifest, name: str, *, verify: bool, signed: bool
) -> bytes:
    entry = manifest.files.get(name)
    if entry is None:
        raise _corrupt(step_dir / MANIFEST_NAME, manifest.step, f"does not list {name}")
    reader = _VerifiedReader(step_dir / name, entry, manifest.step, verify=verify, signed=signed)
    try:
        data = reader.read_rest()
    finally:
        reader.close()
    reader.finish()
    return data


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
    if not all(_is_int(d) and d >= 0 for d in shape):
        raise ValueError(f"shape {shape!r:.80} has a size that is not a non-negative int")
    if view:
        return _parse_view(entry, shape)
    if not (_is_int(offset) and _is_int(nbytes) and offset >= 0 and nbytes >= 0):
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
    if not _is_int(view_of) or view_of < 0:
        raise ValueError(f"view_of {view_of!r:.40} is not an array index")
    if (
        not isinstance(stride, list)
        or len(stride) != len(shape)
        or not all(_is_int(s) and s >= 0 for s in stride)
    ):
        raise ValueError(f"stride {stride!r:.80} does not fit shape {shape}")
    if not _is_int(storage_offset) or storage_offset < 0:
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


@dataclass(frozen=True)
class _Index:
    tree: Any
    specs: list[ArraySpec]
    checksums: list[str | None]  # per array (steps written before they existed: None)


def _read_index(
    step_dir: Path, manifest: Manifest, item: str, *, verify: bool, signed: bool
) -> _Index:
    """The item's tree and array table, each array checked to lie in the data file, and the
    data file's listed size checked to end where the last array ends."""
    name = f"{item}.index.json"
    path = step_dir / name
    index = _parse_json(
        _read_small(step_dir, manifest, name, verify=verify, signed=signed), path, manifest.step
    )
    if not isinstance(index, dict) or not isinstance(index.get("arrays"), list):
        raise _corrupt(path, manifest.step, "not an index (no array table)")
    if "tree" not in index:
        raise _corrupt(path, manifest.step, "not an index (no tree)")
    specs, checksums = [], []
    for position, entry in enumerate(index["arrays"]):
        try:
            specs.append(_parse_spec(entry))
        except ValueError as exc:
            raise _corrupt(path, manifest.step, f"array {position}: {exc}") from None
        checksum = entry.get(CHECKSUM)
        if checksum is not None and not (
            isinstance(checksum, str) and _HEX_RE[CHECKSUM].match(checksum)
        ):
            raise _corrupt(path, manifest.step, f"array {position}: bad {CHECKSUM}")
        checksums.append(checksum)
    try:
        _check_views(specs)
    except ValueError as exc:
        raise _corrupt(path, manifest.step, str(exc)) from None
    data_size: int = manifest.files[f"{item}.data"]["size"]
    end = max((s.offset + s.nbytes for s in specs), default=0)
    if end != data_size:
        raise _corrupt(
            path,
            manifest.step,
            f"its arrays end at byte {end}, but {item}.data is listed with {data_size} bytes",
        )
    return _Index(index["tree"], specs, checksums)


def _object_paths(node: Any, where: str, found: list[str]) -> None:
    """Where in the tree pickled objects sit, e.g. ``state['config']`` (at most 10)."""
    if len(found) >= 10 or not isinstance(node, dict) or len(node) != 1:
        return
    ((tag, body),) = node.items()
    if tag == "o":
        found.append(where)
    elif tag in ("l", "t") and isinstance(body, list):
        for i, value in enumerate(body):
            _object_paths(value, f"{where}[{i}]", found)
    elif tag in ("d", "od") and isinstance(body, list):
        for pair in body:
            if isinstance(pair, list) and len(pair) == 2:
                _object_paths(pair[1], f"{where}[{pair[0]!r}]", found)


def refuse_objects(step_dir: Path, manifest: Manifest, item: str, tree: Any) -> None:
    """Raise :class:`WeightsOnlyError` naming where pickled objects sit, if the item has any
    (``weights_only=True``)."""
    objects_name = f"{item}.objects.pkl"
    if objects_name in manifest.files:
        where: list[str] = []
        _object_paths(tree, item, where)
        raise WeightsOnlyError(
            f"step {manifest.step} holds pickled objects ({', '.join(where) or objects_name}) "
            f"in {step_dir / objects_name}; weights_only=True refuses to unpickle them",
            path=step_dir / objects_name,
            step=manifest.step,
        )


def _array_in(arena: np.ndarray[Any, np.dtype[np.uint8]], spec: ArraySpec) -> Any:
    """The array ``spec`` describes, as a view of ``arena`` (the data file's bytes).

    A torch tensor gets a storage of its own covering just its bytes (saving it writes only
    those); the memory is shared and returned when the last array of the item is freed.
    """
    if spec.framework == "torch":
        dtype = TORCH_DTYPES[spec.dtype]
        if spec.nbytes == 0:
            return torch.empty(spec.shape, dtype=dtype)
        raw = torch.frombuffer(arena, dtype=torch.uint8, count=spec.nbytes, offset=spec.offset)
        return raw.view(dtype).view(spec.shape)
    region = arena[spec.offset : spec.offset + spec.nbytes]
    return region.view(np.dtype(spec.dtype)).reshape(spec.shape)


def _target_device(spec: ArraySpec, map_location: Any, step_dir: Path, step: int) -> torch.device:
    device = DeviceMap.of(map_location)(spec.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError(
            f"step {step} holds tensors saved on {spec.device}, and this process has no CUDA "
            "device; pass map_location='cpu' to restore them on the CPU",
            path=step_dir,
            step=step,
        )
    return device


def _finish_tensor(
    tensor: torch.Tensor, spec: ArraySpec, map_location: Any, step_dir: Path, step: int
) -> torch.Tensor:
    device = _target_device(spec, map_location, step_dir, step)
    if device.type != "cpu":
        tensor = tensor.to(device)
    return _mark(tensor, spec)


def _mark(tensor: torch.Tensor, spec: ArraySpec) -> torch.Tensor:
    if spec.parameter:
        return torch.nn.Parameter(tensor, requires_grad=spec.requires_grad)
    if spec.requires_grad:
        tensor.requires_grad_(True)
    return tensor


def _make_view(storage: torch.Tensor, spec: ArraySpec) -> torch.Tensor:
    """The tensor ``spec`` places in a restored shared storage (a uint8 tensor that starts
    its own storage, on the device it was restored to): every view of one storage shares
    its memory, as the saved tensors did."""
    assert spec.stride is not None
    dtype = TORCH_DTYPES[spec.dtype]
    usable = storage.numel() // dtype.itemsize * dtype.itemsize
    typed = storage[:usable].view(dtype)
    view = torch.as_strided(typed, spec.shape, spec.stride, spec.storage_offset)
    return _mark(view, spec)


def read_item(
    step_dir: Path,
    manifest: Manifest,
    item: str,
    *,
    verify: bool = True,
    map_location: Any = None,
    weights_only: bool | None = None,
    signing_key: bytes | None = None,
    mode: str = "mmap",
    pinned: PinnedChunks | None = None,
) -> Any:
    """Rebuild one item's state tree (``manifest`` comes from :func:`read_manifest`, with
    the same ``signing_key``).

    ``mode="mmap"``: CPU tensors and arrays are views of the data file mapped copy-on-write
    (``mapping.py``), verified in one pass over the mapping. ``mode="copy"``: the file is
    read into fresh memory, hashing each chunk while the next is read. Either way CUDA
    tensors are streamed from those bytes through ``pinned`` chunks (other devices:
    ``.to(device)``).

    Raises :class:`CheckpointCorruptError` naming the file for any violation (see the module
    docstring); :class:`WeightsOnlyError` naming where the objects sit when
    ``weights_only`` and the item holds pickled objects (nothing is unpickled)."""
    if item not in manifest.items:
        raise KeyError(f"step {manifest.step} has no item {item!r} (it has {manifest.items})")
    map_location = DeviceMap.of(map_location)
    signed = signing_key is not None
    data_name = f"{item}.data"
    # Mapped: the checksum pass over the data starts now and runs while the index is read.
    arena, digest = None, None
    if mode == "mmap":
        arena, digest = _map_data(step_dir, manifest, data_name, verify=verify, signed=signed)
    index = _read_index(step_dir, manifest, item, verify=verify, signed=signed)
    tree, specs = index.tree, index.specs
    objects_name = f"{item}.objects.pkl"
    if weights_only:
        refuse_objects(step_dir, manifest, item, tree)
    if arena is None:
        arena = _read_data(step_dir, manifest, data_name, verify=verify, signed=signed)
    try:
        arrays = _arrays_in(
            arena, specs, step_dir, manifest.step, map_location=map_location, pinned=pinned
        )
    finally:  # nothing mapped is returned before its digest matched
        intact = digest is None or digest.hexdigest() == manifest.files[data_name].get(
            FILE_DIGEST if signed else CHECKSUM
        )
    if not intact:
        raise _mismatch(step_dir / data_name, manifest.step, signed=signed)
    for position, spec in enumerate(specs):
        if spec.view_of is not None:  # storages first: views are made of them
            arrays[position] = _make_view(arrays[spec.view_of], spec)
    objects = None
    if objects_name in manifest.files:
        objects = _unpickle(
            step_dir,
            manifest,
            objects_name,
            arrays,
            verify=verify,
            signed=signed,
            restricted=weights_only is None and not signed,  # a verified signature: trusted
        )
    try:
        return decode_tree(tree, arrays, objects)
    except TreeError as exc:
        raise _corrupt(step_dir / f"{item}.index.json", manifest.step, str(exc)) from None


def _read_data(
    step_dir: Path, manifest: Manifest, data_name: str, *, verify: bool, signed: bool
) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """The data file read into fresh memory, verified (``restore_mode="copy"``)."""
    data_path = step_dir / data_name
    reader = _VerifiedReader(
        data_path, manifest.files[data_name], manifest.step, verify=verify, signed=signed
    )
    try:
        _check_allocatable(data_path, manifest.step, reader.expected_size)
        # One allocation for the whole file (numpy asks for huge pages: cheap first touch),
        # read in chunks so that hashing one overlaps reading the next.
        arena = np.empty(reader.expected_size, dtype=np.uint8)
        for start in range(0, reader.expected_size, _HASH_CHUNK):
            reader.read_into(arena.data[start : start + _HASH_CHUNK])
    finally:
        reader.close()
    reader.finish()
    return arena


def _map_data(
    step_dir: Path, manifest: Manifest, data_name: str, *, verify: bool, signed: bool
) -> tuple[np.ndarray[Any, np.dtype[np.uint8]], _Hasher | None]:
    """The data file mapped copy-on-write, and its digest being computed on a thread (the
    mapping must not be written until the digest is read)."""
    data_path, step = step_dir / data_name, manifest.step
    entry = manifest.files.get(data_name)
    if entry is None:
        raise _corrupt(step_dir / MANIFEST_NAME, step, f"does not list {data_name}")
    expected = int(entry["size"])
    fd, actual = _open_regular(data_path, step)
    try:
        if actual != expected:
            raise _corrupt(data_path, step, f"size {actual} bytes, manifest says {expected}")
        # A private mapping may come to need as much memory as the file (when every page
        # is written): the same limit as a copy.
        _check_allocatable(data_path, step, expected)
        try:
            arena = map_data_file(fd, expected)
        except OSError as exc:
            raise CheckpointError(
                f"cannot map {data_path}: {exc}", path=data_path, step=step
            ) from exc
    finally:
        os.close(fd)
    if not verify:
        return arena, None
    hasher = _file_hasher(signed=signed, threaded=True)
    for start in range(0, expected, _HASH_CHUNK):
        hasher.update(arena.data[start : start + _HASH_CHUNK])
    return arena, hasher


def _arrays_in(
    arena: np.ndarray[Any, np.dtype[np.uint8]],
    specs: list[ArraySpec],
    step_dir: Path,
    step: int,
    *,
    map_location: Any,
    pinned: PinnedChunks | None,
) -> list[Any]:
    """The arrays of ``specs`` (but views) in the data file's bytes: CPU ones as views of
    ``arena``, CUDA tensors streamed from it through ``pinned`` chunks, other devices
    copied with ``.to(device)``."""
    arrays: list[Any] = [None] * len(specs)
    streamed: dict[torch.device, list[int]] = {}
    for position, spec in enumerate(specs):
        if spec.view_of is not None:
            continue
        if spec.framework != "torch":
            arrays[position] = _array_in(arena, spec)
            continue
        device = _target_device(spec, map_location, step_dir, step)
        if device.type == "cuda" and spec.nbytes:
            streamed.setdefault(device, []).append(position)
        elif device.type == "cpu":
            arrays[position] = _mark(_array_in(arena, spec), spec)
        else:
            arrays[position] = _mark(_array_in(arena, spec).to(device), spec)
    for device, positions in streamed.items():
        regions = [(specs[p].offset, specs[p].nbytes) for p in positions]
        filled = stream_to_device(arena, regions, device, pinned or PinnedChunks())
        for position, raw in zip(positions, filled, strict=True):
            spec = specs[position]
            arrays[position] = _mark(raw.view(TORCH_DTYPES[spec.dtype]).view(spec.shape), spec)
    return arrays


def _unpickle(
    step_dir: Path,
    manifest: Manifest,
    name: str,
    arrays: list[Any],
    *,
    verify: bool,
    signed: bool,
    restricted: bool,
) -> list[Any]:
    """Read and unpickle an item's objects (``restricted``: through the allow-list); an
    object that does not unpickle is reported as a corrupt step naming the file (its cause
    chained), a refused global as :class:`UnsafeObjectError`."""
    data = _read_small(step_dir, manifest, name, verify=verify, signed=signed)
    try:
        return unpickle_objects(data, arrays, restricted=restricted)
    except RefusedGlobal as refused:
        raise unsafe_object_error(refused, step_dir / name, manifest.step) from None
    except CheckpointCorruptError:
        raise  # an array it refers to failed its checksum
    except Exception as exc:
        why = f"cannot unpickle its objects ({type(exc).__name__}: {exc})"
        raise _corrupt(step_dir / name, manifest.step, why) from exc


def _check_file(path: Path, entry: Mapping[str, Any], step: int, *, signed: bool) -> None:
    """Stream one file through its digest in a reused buffer; nothing is kept."""
    digest_name = FILE_DIGEST if signed else CHECKSUM
    hasher = ChunkedDigest(parallel=False) if signed else xxhash.xxh3_64()
    fd, size = _open_regular(path, step)
    with os.fdopen(fd, "rb", buffering=0) as file:
        if size != entry["size"]:
            raise _corrupt(path, step, f"size {size} bytes, manifest says {entry['size']}")
        chunk = memoryview(bytearray(min(_HASH_CHUNK, size)))
        remaining = size
        while remaining:
            piece = chunk[: min(remaining, _HASH_CHUNK)]
            filled = 0
            while filled < piece.nbytes:  # whole chunks: the chunked digest needs them
                got = file.readinto(piece[filled:])
                if not got:
                    raise _corrupt(path, step, "truncated while reading")
                filled += got
            hasher.update(piece)
            remaining -= filled
    if hasher.hexdigest() != entry.get(digest_name):
        raise _mismatch(path, step, signed=signed)


def verify_step(step_dir: Path, manifest: Manifest, *, signing_key: bytes | None = None) -> None:
    """Check every listed file's size and digest, and every item's index and tree, without
    unpickling anything or building a tensor. Raises what :func:`read_item` raises."""
    signed = signing_key is not None
    for name in manifest.files:
        _check_file(step_dir / name, manifest.files[name], manifest.step, signed=signed)
    for item in manifest.items:
        index = _read_index(step_dir, manifest, item, verify=False, signed=signed)
        objects = _PickledPlaceholders() if f"{item}.objects.pkl" in manifest.files else None
        try:
            decode_tree(index.tree, [None] * len(index.specs), objects)
        except TreeError as exc:
            raise _corrupt(step_dir / f"{item}.index.json", manifest.step, str(exc)) from None


# -- partial reads and metadata ---------------------------------------------------------------

Selector = str | int | tuple[Any, ...]


@dataclass(frozen=True)
class ArrayMetadata:
    """What :func:`read_array_metadata` says of one tensor or array, without reading it."""

    framework: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    device: str = "cpu"


@dataclass(frozen=True)
class PickledObject:
    """Stands for a pickled leaf in :func:`read_array_metadata` (never unpickled there)."""

    index: int


class _PickledPlaceholders(list[Any]):
    def __len__(self) -> int:
        return sys.maxsize

    def __getitem__(self, index: Any) -> PickledObject:  # type: ignore[override]
        return PickledObject(int(index))


def read_array_metadata(
    step_dir: Path, manifest: Manifest, item: str, *, signing_key: bytes | None = None
) -> Any:
    """The item's tree with every tensor and array replaced by its :class:`ArrayMetadata`
    and every pickled leaf by a :class:`PickledObject`: shapes and dtypes, from the index
    alone (verified), without reading the data file or unpickling anything."""
    if item not in manifest.items:
        raise KeyError(f"step {manifest.step} has no item {item!r} (it has {manifest.items})")
    index = _read_index(step_dir, manifest, item, verify=True, signed=signing_key is not None)
    arrays = [
        ArrayMetadata(s.framework, s.dtype, s.shape, _tensor_bytes(s), s.device)
        for s in index.specs
    ]
    objects = _PickledPlaceholders() if f"{item}.objects.pkl" in manifest.files else None
    try:
        return decode_tree(index.tree, arrays, objects)
    except TreeError as exc:
        raise _corrupt(step_dir / f"{item}.index.json", manifest.step, str(exc)) from None


def _tensor_bytes(spec: ArraySpec) -> int:
    if spec.view_of is None:
        return spec.nbytes
    return math.prod(spec.shape) * TORCH_DTYPES[spec.dtype].itemsize


def _key(node: Any) -> Any:
    return decode_tree(node, [], None)  # keys are scalars or tuples of them


def _child(node: Any, key: Any) -> Any:
    """The tree node under ``key`` of a container node; KeyError when there is none."""
    if isinstance(node, dict) and len(node) == 1:
        ((tag, body),) = node.items()
        if tag in ("d", "od") and isinstance(body, list):
            for pair in body:
                if isinstance(pair, list) and len(pair) == 2 and _key(pair[0]) == key:
                    return pair[1]
        elif tag in ("da", "oda") and isinstance(body, list) and len(body) == 2:
            first, keys = body
            if isinstance(keys, list) and key in keys and type(first) is int:
                return {"a": first + keys.index(key)}
        elif (
            tag in ("l", "t")
            and isinstance(body, list)
            and type(key) is int
            and -len(body) <= key < len(body)
        ):
            return body[key]
    raise KeyError(key)


def _references(node: Any, arrays: set[int]) -> bool:
    """Add the arrays ``node`` refers to; whether it holds pickled objects."""
    if not isinstance(node, dict) or len(node) != 1:
        return False
    ((tag, body),) = node.items()
    if tag == "a" and type(body) is int:
        arrays.add(body)
        return False
    if tag == "o":
        return True
    if tag in ("da", "oda") and isinstance(body, list) and len(body) == 2:
        first, keys = body
        if type(first) is int and isinstance(keys, list):
            arrays.update(range(first, first + len(keys)))
        return False
    objects = False
    if tag in ("l", "t") and isinstance(body, list):
        for value in body:
            objects |= _references(value, arrays)
    elif tag in ("d", "od") and isinstance(body, list):
        for pair in body:
            if isinstance(pair, list) and len(pair) == 2:
                objects |= _references(pair[0], arrays) | _references(pair[1], arrays)
    return objects


ALIGNMENT_GAP = 4096  # arrays closer than this are read in one go, gap included


def _end(spec: ArraySpec) -> int:
    return spec.offset + spec.nbytes


class _ArrayReader(list[Any]):
    """The item's arrays, each read from the data file (``pread``) and verified against its
    own checksum the first time it is asked for: a partial restore reads only those bytes."""

    def __init__(
        self, fd: int, path: Path, index: _Index, step: int, *, finish: Any, verify: bool
    ) -> None:
        super().__init__()
        self._fd, self._path, self._index, self._step = fd, path, index, step
        self._finish, self._verify = finish, verify
        self._loaded: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self._index.specs)

    def prefetch(self, positions: set[int]) -> None:
        """Read the arrays at ``positions`` with as few reads as their layout allows (runs
        of neighbouring arrays in one read, into one allocation), hashing each run on a
        second thread while the next is read."""
        specs = self._index.specs
        order = sorted((p for p in positions if specs[p].nbytes), key=lambda p: specs[p].offset)
        runs: list[list[int]] = []
        for position in order:
            if runs and specs[position].offset - _end(specs[runs[-1][-1]]) < ALIGNMENT_GAP:
                runs[-1].append(position)
            else:
                runs.append([position])
        total = sum(_end(specs[r[-1]]) - specs[r[0]].offset for r in runs)
        arena = np.empty(total, dtype=np.uint8)
        checks = ArrayChecks(self._index.checksums, enabled=self._verify)
        start = 0
        views: dict[int, np.ndarray[Any, np.dtype[np.uint8]]] = {}
        try:
            for run in runs:
                first = specs[run[0]].offset
                length = _end(specs[run[-1]]) - first
                region = arena[start : start + length]
                self._pread(region.data, first)
                for position in run:
                    offset = specs[position].offset - first
                    views[position] = region[offset : offset + specs[position].nbytes]
                    checks.put(position, views[position].data)
                start += length
        finally:
            failed = checks.finish()
        if failed is not None:
            self.refuse(failed)
        for position, piece in views.items():
            self._loaded[position] = self._build(position, piece)

    def refuse(self, position: int) -> None:
        """Raise the corruption of array ``position``, whose checksum did not match."""
        why = f"checksum mismatch ({CHECKSUM}) of array {position}"
        raise _corrupt(self._path, self._step, why)

    def _pread(self, view: memoryview, offset: int) -> None:
        filled = 0
        while filled < view.nbytes:
            got = os.preadv(self._fd, [view[filled:]], offset + filled)
            if not got:
                raise _corrupt(self._path, self._step, "truncated while reading")
            filled += got

    def _build(self, position: int, buffer: np.ndarray[Any, np.dtype[np.uint8]]) -> Any:
        spec = self._index.specs[position]
        array = _array_in(buffer, dataclasses.replace(spec, offset=0))
        if spec.framework == "torch":
            array = self._finish(array, spec)
        return array

    def __getitem__(self, position: Any) -> Any:
        if isinstance(position, slice):
            return [self[i] for i in range(*position.indices(len(self)))]
        position = int(position)
        if position in self._loaded:
            return self._loaded[position]
        spec = self._index.specs[position]
        if spec.view_of is not None:
            self._loaded[position] = _make_view(self[spec.view_of], spec)
            return self._loaded[position]
        buffer = np.empty(spec.nbytes, dtype=np.uint8)
        self._pread(buffer.data, spec.offset)
        expected = self._index.checksums[position]
        if self._verify and xxhash.xxh3_64_hexdigest(buffer.data) != expected:
            self.refuse(position)
        self._loaded[position] = self._build(position, buffer)
        return self._loaded[position]


def read_selected(
    step_dir: Path,
    manifest: Manifest,
    item: str,
    select: Sequence[Selector],
    *,
    verify: bool = True,
    map_location: Any = None,
    weights_only: bool | None = None,
    signing_key: bytes | None = None,
) -> dict[Any, Any]:
    """The selected subtrees of one item, as nested dicts along their paths: ``"model"`` is
    the top-level key ``model``, ``("optimizer", "state")`` a nested one, an int an index of
    a list. Only the bytes of the arrays under the selection are read, each verified by its
    own checksum; pickled objects are unpickled only when a selected subtree holds one.

    A step without per-array checksums, or any read with a signing key (xxh3 of a part is no
    signature), reads and verifies the whole item instead. Raises KeyError naming a path that
    the item does not have, and what :func:`read_item` raises."""
    if item not in manifest.items:
        raise KeyError(f"step {manifest.step} has no item {item!r} (it has {manifest.items})")
    map_location = DeviceMap.of(map_location)
    signed = signing_key is not None
    index = _read_index(step_dir, manifest, item, verify=verify, signed=signed)
    paths = [tuple(s) if isinstance(s, tuple) else (s,) for s in select]
    nodes = []
    for path in paths:
        node = index.tree
        for depth, key in enumerate(path):
            try:
                node = _child(node, key)
            except KeyError:
                raise KeyError(
                    f"step {manifest.step} item {item!r} has no {path[: depth + 1]}"
                ) from None
        nodes.append(node)
    needed: set[int] = set()
    holds_objects = any([_references(node, needed) for node in nodes])
    for position in list(needed):  # a view needs its storage
        if 0 <= position < len(index.specs) and index.specs[position].view_of is not None:
            needed.add(index.specs[position].view_of)  # type: ignore[arg-type]
    if signed or (verify and any(index.checksums[i] is None for i in needed)):
        whole = read_item(
            step_dir,
            manifest,
            item,
            verify=verify,
            map_location=map_location,
            weights_only=weights_only,
            signing_key=signing_key,
        )
        return _assemble(paths, [_pick(whole, path) for path in paths])
    objects_name = f"{item}.objects.pkl"
    if holds_objects and weights_only:
        raise WeightsOnlyError(
            f"the selection holds pickled objects ({step_dir / objects_name}); "
            "weights_only=True refuses to unpickle them",
            path=step_dir / objects_name,
            step=manifest.step,
        )
    data_path = step_dir / f"{item}.data"
    fd, size = _open_regular(data_path, manifest.step)
    try:
        listed = manifest.files[f"{item}.data"]["size"]
        if size != listed:
            raise _corrupt(data_path, manifest.step, f"size {size} bytes, manifest says {listed}")

        def finish(tensor: torch.Tensor, spec: ArraySpec) -> torch.Tensor:
            return _finish_tensor(tensor, spec, map_location, step_dir, manifest.step)

        arrays = _ArrayReader(fd, data_path, index, manifest.step, finish=finish, verify=verify)
        arrays.prefetch(needed)
        objects = None
        if holds_objects:
            objects = _unpickle(
                step_dir,
                manifest,
                objects_name,
                arrays,
                verify=verify,
                signed=False,
                restricted=weights_only is None,
            )
        try:
            values = [decode_tree(node, arrays, objects) for node in nodes]
        except TreeError as exc:
            raise _corrupt(step_dir / f"{item}.index.json", manifest.step, str(exc)) from None
    finally:
        os.close(fd)
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
