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

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from alphatriangle.data.arrays import ArraySpec, is_array_leaf
from alphatriangle.data.tree import JsonTree, TreeEncoder

__all__ = [
    "ALIGNMENT",
    "HostBuffer",
    "StagedState",
    "StagingPool",
    "stage_state",
]

ALIGNMENT = 64
PAGE = 4096  # host buffers start on a page and data files are padded to one: O_DIRECT-able


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
        self.staging_layout: _StagingLayout | None = None  # views of this buffer's memory

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
        self.staging_layout = None

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


def _layout(leaves: list[Any]) -> tuple[list[ArraySpec], int]:
    specs = []
    offset = 0
    for leaf in leaves:
        offset = -(-offset // ALIGNMENT) * ALIGNMENT
        spec = ArraySpec.of(leaf, offset)
        specs.append(spec)
        offset += spec.nbytes
    return specs, offset


_TORCH_TYPES = frozenset({torch.Tensor, torch.nn.Parameter})


def _signature(leaves: list[Any]) -> tuple[list[Any], ...] | None:
    """What the layout of ``leaves`` depends on (types, dtypes, shapes, devices, layouts,
    ``requires_grad``), as one list per attribute: cheap to build and to compare for many
    small leaves. None when a leaf cannot say (e.g. a nested tensor has no shape)."""
    types = [type(leaf) for leaf in leaves]
    try:
        if _TORCH_TYPES.issuperset(types):
            return (
                types,
                [leaf.dtype for leaf in leaves],
                [leaf.shape for leaf in leaves],
                [leaf.device for leaf in leaves],
                [leaf.layout for leaf in leaves],
                [leaf.requires_grad for leaf in leaves],
            )
        return (types, [_leaf_key(leaf) for leaf in leaves])
    except (RuntimeError, AttributeError):
        return None


def _leaf_key(leaf: Any) -> tuple[Any, ...]:
    if isinstance(leaf, np.ndarray):
        return (leaf.dtype, leaf.shape)
    return (leaf.dtype, leaf.shape, leaf.device, leaf.layout, leaf.requires_grad)


@dataclass
class _StagingLayout:
    """Where each leaf of a state goes in a buffer; reused by the next save whose leaves
    have the same signature, so that a state of many small tensors is placed once."""

    signature: tuple[list[Any], ...]
    specs: list[ArraySpec]
    nbytes: int
    targets: list[Any]  # per leaf, its view of the buffer (tensor or ndarray)
    cpu_tensors: list[int] | None  # leaves copied with one batched call; None: all of them
    others: list[int]  # numpy arrays and CUDA tensors, copied one by one


def _plan(leaves: list[Any], buffer: HostBuffer) -> _StagingLayout:
    specs, nbytes = _layout(leaves)
    needs_pinned = any(
        isinstance(leaf, torch.Tensor) and leaf.device.type == "cuda" for leaf in leaves
    )
    buffer.ensure(nbytes, pinned=needs_pinned)
    buffer.clear_padding(specs, nbytes)
    targets: list[Any] = []
    cpu_tensors: list[int] = []
    others: list[int] = []
    for index, (leaf, spec) in enumerate(zip(leaves, specs, strict=True)):
        region = slice(spec.offset, spec.offset + spec.nbytes)
        if isinstance(leaf, np.ndarray):
            targets.append(buffer.array[region].view(leaf.dtype).reshape(leaf.shape))
            others.append(index)
            continue
        targets.append(buffer.tensor[region].view(leaf.dtype).view(leaf.shape))
        (others if leaf.device.type == "cuda" else cpu_tensors).append(index)
    signature = _signature(leaves)
    assert signature is not None
    everything = len(cpu_tensors) == len(leaves)
    return _StagingLayout(
        signature, specs, nbytes, targets, None if everything else cpu_tensors, others
    )


def stage_state(state: object, buffer: HostBuffer) -> StagedState:
    """Capture ``state`` into ``buffer``; when this returns, later changes to ``state`` (in
    place or not, on any device) do not change what is captured.

    A save whose leaves have the same types, dtypes, shapes and devices as the buffer's
    previous save reuses its placement: no allocation, no per-leaf bookkeeping, CPU tensors
    copied in one batched call.

    Raises whatever cloudpickle raises for an object it cannot serialise, before anything is
    written.
    """
    encoder = TreeEncoder(compact=True)
    tree = encoder.encode(state)
    objects = encoder.pickle_objects()
    leaves = encoder.leaves
    layout = buffer.staging_layout
    if layout is None or layout.signature != _signature(leaves):
        if encoder.compacted and not all(map(is_array_leaf, leaves)):
            # A compact dict node took a leaf that must be pickled instead: encode again.
            encoder = TreeEncoder(compact=False)
            tree = encoder.encode(state)
            objects = encoder.pickle_objects()
            leaves = encoder.leaves
        layout = buffer.staging_layout = _plan(leaves, buffer)
    _copy_leaves(leaves, layout)
    return StagedState(
        tree=tree, arrays=layout.specs, objects=objects, buffer=buffer, nbytes=layout.nbytes
    )


_copy_streams: dict[torch.device, torch.cuda.Stream] = {}


def _copy_stream(device: torch.device) -> torch.cuda.Stream:
    """One dedicated copy stream per CUDA device, created on first use."""
    stream = _copy_streams.get(device)
    if stream is None:
        # torch.cuda.Stream.__init__ carries no annotations.
        stream = _copy_streams[device] = torch.cuda.Stream(device=device)  # type: ignore[no-untyped-call]
    return stream


_foreach_copy = getattr(torch, "_foreach_copy_", None)


def _copy_leaves(leaves: list[Any], layout: _StagingLayout) -> None:
    targets = layout.targets
    with torch.no_grad():  # the copies are no part of any graph: no detach per leaf
        if layout.cpu_tensors is None:
            cpu_sources, cpu_targets = leaves, targets
        else:
            cpu_sources = [leaves[i] for i in layout.cpu_tensors]
            cpu_targets = [targets[i] for i in layout.cpu_tensors]
        if _foreach_copy is not None and cpu_targets:
            _foreach_copy(cpu_targets, cpu_sources)
        else:
            for target, source in zip(cpu_targets, cpu_sources, strict=True):
                target.copy_(source)
        used_streams: list[torch.cuda.Stream] = []
        for index in layout.others:
            leaf, target = leaves[index], targets[index]
            if isinstance(leaf, np.ndarray):
                np.copyto(target, leaf, casting="no")
                continue
            stream = _copy_stream(leaf.device)
            if stream not in used_streams:
                # Kernels queued on the training stream must finish writing first.
                stream.wait_stream(torch.cuda.current_stream(leaf.device))
                used_streams.append(stream)
            with torch.cuda.stream(stream):
                target.copy_(leaf, non_blocking=True)
        for stream in used_streams:
            stream.synchronize()
