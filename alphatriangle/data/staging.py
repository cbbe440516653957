"""Snapshot of a state tree into reusable host memory: the only work ``save`` does on the
caller's thread.

A state tree is nested dicts, lists and tuples whose leaves are tensors (any device), numpy
arrays, scalars, strings or any other object cloudpickle can serialise. Staging splits it in
three:

- the *tree*: its containers and plain scalars, as JSON (no pickle is needed to read it);
- the *arrays*: every dense tensor and array, copied byte for byte into one host buffer at
  64-byte aligned offsets (CUDA tensors: into pinned memory on a side stream, waited on before
  staging returns);
- the *objects*: every other leaf, cloudpickled together on the caller's thread, so that later
  mutation by the caller cannot change what is written. Tensors and arrays found inside such
  objects still travel out of band, as arrays.

Host buffers come from a :class:`StagingPool` with one buffer per save that may be in flight;
a buffer is allocated (and zeroed) only when a save needs more room than it has, and is reused
otherwise.
"""

from __future__ import annotations

import io
import math
import pickle
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import cloudpickle
import numpy as np
import torch

__all__ = [
    "ALIGNMENT",
    "ArraySpec",
    "HostBuffer",
    "StagedState",
    "StagingPool",
    "decode_tree",
    "is_array_leaf",
    "stage_state",
    "unpickle_objects",
]

ALIGNMENT = 64
PAGE = 4096  # host buffers start on a page and data files are padded to one: O_DIRECT-able
JsonTree = Any  # None | bool | int | float | str | list | dict: what json.dumps accepts


@dataclass(frozen=True)
class ArraySpec:
    """Where one tensor or array lies in the data file, and how to rebuild it."""

    framework: Literal["torch", "numpy"]
    dtype: str  # torch: "float32", "bfloat16"...; numpy: dtype.str, e.g. "<f4"
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    device: str = "cpu"
    requires_grad: bool = False
    parameter: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "framework": self.framework,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "offset": self.offset,
            "nbytes": self.nbytes,
        }
        if self.framework == "torch":
            out.update(
                device=self.device, requires_grad=self.requires_grad, parameter=self.parameter
            )
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ArraySpec:
        return cls(
            framework=data["framework"],
            dtype=data["dtype"],
            shape=tuple(int(d) for d in data["shape"]),
            offset=int(data["offset"]),
            nbytes=int(data["nbytes"]),
            device=data.get("device", "cpu"),
            requires_grad=bool(data.get("requires_grad", False)),
            parameter=bool(data.get("parameter", False)),
        )


def is_array_leaf(value: object) -> bool:
    """Whether ``value`` travels out of band as raw bytes: a dense, strided tensor, or a numpy
    array of a plain (non-object, non-structured) dtype."""
    if isinstance(value, torch.Tensor):
        return (
            value.layout == torch.strided
            and not value.is_quantized
            and value.device.type != "meta"
            and not value.is_nested
        )
    if isinstance(value, np.ndarray):
        return not value.dtype.hasobject and value.dtype.fields is None
    return False


class HostBuffer:
    """One reusable staging buffer: a flat byte tensor starting on a page boundary (so that
    the data file can be written from it with O_DIRECT), pinned once CUDA tensors use it."""

    def __init__(self) -> None:
        self._raw = torch.empty(0, dtype=torch.uint8)
        self.tensor = torch.empty(0, dtype=torch.uint8)
        self.array: np.ndarray[Any, np.dtype[np.uint8]] = self.tensor.numpy()
        self.pinned = False
        self.allocations = 0
        self._layout: tuple[tuple[int, int], ...] = ()

    @property
    def capacity(self) -> int:
        return int(self.tensor.numel())

    def ensure(self, nbytes: int, *, pinned: bool) -> None:
        """Make room for ``nbytes``; allocates only when the buffer is too small (or must
        become pinned), never to shrink."""
        if nbytes <= self.capacity and (self.pinned or not pinned):
            return
        capacity = max(nbytes, self.capacity)
        capacity = -(-capacity // (1 << 20)) << 20  # round up to 1 MiB (so to a page too)
        pinned = pinned or self.pinned  # once pinned, stay pinned: no flip-flopping
        self._raw = self.tensor = torch.empty(0, dtype=torch.uint8)  # drop the old one first
        self._raw = torch.zeros(capacity + PAGE, dtype=torch.uint8, pin_memory=pinned)
        shift = -self._raw.data_ptr() % PAGE
        self.tensor = self._raw[shift : shift + capacity]
        self.array = self.tensor.numpy()
        self.pinned = pinned
        self.allocations += 1
        self._layout = ()

    def clear_padding(self, specs: list[ArraySpec], nbytes: int) -> None:
        """Zero the gaps between arrays when the layout changed since the last save, so that
        files never carry stale bytes."""
        layout = tuple((s.offset, s.nbytes) for s in specs)
        if layout == self._layout:
            return
        end = 0
        for offset, size in layout:
            self.array[end:offset] = 0
            end = offset + size
        self.array[end : _page_round(nbytes)] = 0
        self._layout = layout


class StagingPool:
    """One :class:`HostBuffer` per save that may be in flight.

    ``acquire`` hands out a free buffer (waiting for one, or returning None when ``block`` is
    false); the writer ``release``\\ s it once the save has finished.
    """

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self._free = [HostBuffer() for _ in range(slots)]
        self._all = list(self._free)
        self._cond = threading.Condition()

    def acquire(self, *, block: bool) -> HostBuffer | None:
        with self._cond:
            if not self._free and not block:
                return None
            self._cond.wait_for(lambda: bool(self._free))
            return self._free.pop()

    def release(self, buffer: HostBuffer) -> None:
        with self._cond:
            self._free.append(buffer)
            self._cond.notify()

    @property
    def allocations(self) -> int:
        """Buffers allocated so far, over all slots: constant once saves reach steady state."""
        return sum(b.allocations for b in self._all)


@dataclass
class StagedState:
    """A state tree captured by :func:`stage_state`; owns ``buffer`` until released."""

    tree: JsonTree
    arrays: list[ArraySpec]
    objects: bytes | None
    buffer: HostBuffer
    nbytes: int

    def data(self) -> memoryview:
        """The bytes of the data file: every array at its offset, zeros between."""
        return self.buffer.array[: self.nbytes].data

    def page_padded_data(self) -> memoryview:
        """:meth:`data` followed by zeros up to a whole page, starting on a page boundary:
        what an ``O_DIRECT`` write needs."""
        return self.buffer.array[: _page_round(self.nbytes)].data


def _page_round(nbytes: int) -> int:
    return -(-nbytes // PAGE) * PAGE


class _TreeEncoder:
    """Walks a state tree once: JSON for containers and scalars, indices for the rest."""

    def __init__(self) -> None:
        self.leaves: list[torch.Tensor | np.ndarray[Any, Any]] = []
        self.objects: list[object] = []

    def encode(self, value: object) -> JsonTree:
        kind = type(value)
        if value is None or kind is bool or kind is int or kind is str:
            return value
        if kind is float:
            assert isinstance(value, float)
            return value if math.isfinite(value) else {"f": repr(value)}
        if kind is dict:
            assert isinstance(value, dict)
            return {"d": [[self.encode(k), self.encode(v)] for k, v in value.items()]}
        if kind is OrderedDict:
            assert isinstance(value, OrderedDict)
            return {"od": [[self.encode(k), self.encode(v)] for k, v in value.items()]}
        if kind is list:
            assert isinstance(value, list)
            return {"l": [self.encode(v) for v in value]}
        if kind is tuple:
            assert isinstance(value, tuple)
            return {"t": [self.encode(v) for v in value]}
        if is_array_leaf(value):
            return {"a": self.add_leaf(value)}  # type: ignore[arg-type]
        self.objects.append(value)
        return {"o": len(self.objects) - 1}

    def add_leaf(self, leaf: torch.Tensor | np.ndarray[Any, Any]) -> int:
        self.leaves.append(leaf)
        return len(self.leaves) - 1

    def pickle_objects(self) -> bytes | None:
        if not self.objects:
            return None
        stream = io.BytesIO()
        pickler = _OutOfBandPickler(stream, self.add_leaf)
        pickler.dump(self.objects)
        return stream.getvalue()


class _OutOfBandPickler(cloudpickle.CloudPickler):  # type: ignore[misc]
    """cloudpickle that leaves tensors and arrays out of the pickle, as array references."""

    def __init__(self, stream: io.BytesIO, add_leaf: Callable[[Any], int]) -> None:
        super().__init__(stream, protocol=pickle.HIGHEST_PROTOCOL)
        self._add_leaf = add_leaf

    def persistent_id(self, obj: object) -> int | None:
        if is_array_leaf(obj):
            return self._add_leaf(obj)
        return None


class _OutOfBandUnpickler(pickle.Unpickler):
    def __init__(self, stream: io.BytesIO, arrays: list[Any]) -> None:
        super().__init__(stream)
        self._arrays = arrays

    def persistent_load(self, pid: object) -> Any:
        assert isinstance(pid, int)
        return self._arrays[pid]


def _leaf_spec(leaf: torch.Tensor | np.ndarray[Any, Any], offset: int) -> ArraySpec:
    if isinstance(leaf, torch.Tensor):
        return ArraySpec(
            framework="torch",
            dtype=str(leaf.dtype).removeprefix("torch."),
            shape=tuple(leaf.shape),
            offset=offset,
            nbytes=leaf.numel() * leaf.element_size(),
            device=str(leaf.device),
            requires_grad=leaf.requires_grad,
            parameter=isinstance(leaf, torch.nn.Parameter),
        )
    return ArraySpec(
        framework="numpy",
        dtype=leaf.dtype.str,
        shape=tuple(leaf.shape),
        offset=offset,
        nbytes=leaf.nbytes,
    )


def _layout(leaves: list[Any]) -> tuple[list[ArraySpec], int]:
    specs = []
    offset = 0
    for leaf in leaves:
        offset = -(-offset // ALIGNMENT) * ALIGNMENT
        spec = _leaf_spec(leaf, offset)
        specs.append(spec)
        offset += spec.nbytes
    return specs, offset


def stage_state(state: object, buffer: HostBuffer) -> StagedState:
    """Capture ``state`` into ``buffer``; when this returns, later changes to ``state`` (in
    place or not, on any device) do not change what is captured.

    Raises whatever cloudpickle raises for an object it cannot serialise, before anything is
    written.
    """
    encoder = _TreeEncoder()
    tree = encoder.encode(state)
    objects = encoder.pickle_objects()
    specs, nbytes = _layout(encoder.leaves)
    needs_pinned = any(
        isinstance(leaf, torch.Tensor) and leaf.device.type == "cuda" for leaf in encoder.leaves
    )
    buffer.ensure(nbytes, pinned=needs_pinned)
    buffer.clear_padding(specs, nbytes)
    _copy_leaves(encoder.leaves, specs, buffer)
    return StagedState(tree=tree, arrays=specs, objects=objects, buffer=buffer, nbytes=nbytes)


_copy_streams: dict[torch.device, torch.cuda.Stream] = {}


def _copy_stream(device: torch.device) -> torch.cuda.Stream:
    """One dedicated copy stream per CUDA device, created on first use."""
    stream = _copy_streams.get(device)
    if stream is None:
        # torch.cuda.Stream.__init__ carries no annotations.
        stream = _copy_streams[device] = torch.cuda.Stream(device=device)  # type: ignore[no-untyped-call]
    return stream


def _copy_leaves(leaves: list[Any], specs: list[ArraySpec], buffer: HostBuffer) -> None:
    used_streams: list[torch.cuda.Stream] = []
    for leaf, spec in zip(leaves, specs, strict=True):
        if spec.nbytes == 0:
            continue
        region = slice(spec.offset, spec.offset + spec.nbytes)
        if isinstance(leaf, np.ndarray):
            target = buffer.array[region].view(leaf.dtype).reshape(leaf.shape)
            np.copyto(target, leaf, casting="no")
            continue
        source = leaf.detach()
        dst = buffer.tensor[region].view(source.dtype).view(source.shape)
        if source.device.type == "cuda":
            stream = _copy_stream(source.device)
            if stream not in used_streams:
                # Kernels queued on the training stream must finish writing first.
                stream.wait_stream(torch.cuda.current_stream(source.device))
                used_streams.append(stream)
            with torch.cuda.stream(stream):
                dst.copy_(source, non_blocking=True)
        else:
            dst.copy_(source)
    for stream in used_streams:
        stream.synchronize()


def decode_tree(tree: JsonTree, arrays: list[Any], objects: list[Any] | None) -> Any:
    """Rebuild a state tree from its JSON form, the restored arrays and unpickled objects."""
    if not isinstance(tree, dict):
        return tree
    ((tag, body),) = tree.items()
    if tag == "a":
        return arrays[body]
    if tag == "l":
        return [decode_tree(v, arrays, objects) for v in body]
    if tag == "t":
        return tuple(decode_tree(v, arrays, objects) for v in body)
    if tag in ("d", "od"):
        pairs = [
            (decode_tree(k, arrays, objects), decode_tree(v, arrays, objects)) for k, v in body
        ]
        return dict(pairs) if tag == "d" else OrderedDict(pairs)
    if tag == "f":
        return float(body)
    if tag == "o":
        if objects is None:
            raise ValueError("tree refers to a pickled object but the step has none")
        return objects[body]
    raise ValueError(f"unknown tree node tag {tag!r}")


def unpickle_objects(data: bytes, arrays: list[Any]) -> list[Any]:
    """The objects pickled by :func:`stage_state`, with their tensors and arrays put back."""
    result = _OutOfBandUnpickler(io.BytesIO(data), arrays).load()
    assert isinstance(result, list)
    return result
