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

from alphatriangle.data.arrays import ArraySpec
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


def _layout(leaves: list[Any]) -> tuple[list[ArraySpec], int]:
    specs = []
    offset = 0
    for leaf in leaves:
        offset = -(-offset // ALIGNMENT) * ALIGNMENT
        spec = ArraySpec.of(leaf, offset)
        specs.append(spec)
        offset += spec.nbytes
    return specs, offset


def stage_state(state: object, buffer: HostBuffer) -> StagedState:
    """Capture ``state`` into ``buffer``; when this returns, later changes to ``state`` (in
    place or not, on any device) do not change what is captured.

    Raises whatever cloudpickle raises for an object it cannot serialise, before anything is
    written.
    """
    encoder = TreeEncoder()
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
