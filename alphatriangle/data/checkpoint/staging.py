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

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from alphatriangle.data.checkpoint._chunks import part_size
from alphatriangle.data.checkpoint._interrupts import wait_interruptibly
from alphatriangle.data.checkpoint._staging_copy import CopyPlan
from alphatriangle.data.checkpoint.arrays import ArraySpec, is_array_leaf
from alphatriangle.data.checkpoint.tree import JsonTree, TreeEncoder

__all__ = [
    "ALIGNMENT",
    "HostBuffer",
    "StagedState",
    "StagingPool",
    "StagingSlot",
    "stage_state",
]

logger = logging.getLogger(__name__)

_BLOCKED_WARNING_MS = 20.0  # shorter waits are scheduling jitter, not a bottleneck

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


class StagingSlot:
    """The buffers of one save that may be in flight: one :class:`HostBuffer` per item
    name, made on first use and reused by every later save through this slot."""

    def __init__(self) -> None:
        self.buffers: dict[str, HostBuffer] = {}

    def buffer(self, item: str) -> HostBuffer:
        found = self.buffers.get(item)
        if found is None:
            found = self.buffers[item] = HostBuffer()
        return found


class StagingPool:
    """One :class:`StagingSlot` per save that may be in flight.

    ``acquire`` hands out a free slot (waiting for one, or returning None when ``block`` is
    false); the writer ``release``\\ s it once the save has finished.
    """

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self._free = [StagingSlot() for _ in range(slots)]
        self._all = list(self._free)
        self._cond = threading.Condition()

    def buffers(self) -> list[HostBuffer]:
        """Every buffer of every slot."""
        return [b for slot in self._all for b in slot.buffers.values()]

    def acquire(self, *, block: bool) -> StagingSlot | None:
        with self._cond:
            if self._free:
                return self._free.pop()
            if not block:
                return None
            wait_interruptibly(
                lambda timeout: self._cond.wait_for(lambda: bool(self._free), timeout)
            )
            return self._free.pop()

    def acquire_for(self, step: int, *, block: bool) -> StagingSlot | None:
        """:meth:`acquire` for the save of ``step``, saying so when checkpointing has become
        the bottleneck: a warning with the wait in ms when it waited, or naming the step
        skipped when the queue was full and ``block`` is false."""
        waiting_since = time.perf_counter()
        slot = self.acquire(block=block)
        waited_ms = (time.perf_counter() - waiting_since) * 1000
        if waited_ms >= _BLOCKED_WARNING_MS:
            logger.warning(
                "save of step %d waited %.0f ms for earlier saves to finish: "
                "checkpointing is the bottleneck (save less often, or raise max_pending)",
                step,
                waited_ms,
            )
        if slot is None:
            logger.warning(
                "skipped checkpoint of step %d: %d saves still in flight (on_full='skip')",
                step,
                len(self._all),
            )
        return slot

    def release(self, slot: StagingSlot) -> None:
        with self._cond:
            self._free.append(slot)
            self._cond.notify()

    @property
    def allocations(self) -> int:
        """Buffers allocated so far, over all slots: constant once saves reach steady state."""
        return sum(b.allocations for b in self.buffers())


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


@dataclass(frozen=True)
class _SharedStorage:
    """Tensors of the state that share one torch storage (tied weights, views of a flat
    buffer): the bytes ``start .. start + length`` of the storage are staged once, and each
    of those tensors is written as a view of them."""

    leaves: tuple[int, ...]
    start: int
    length: int
    storage_ptr: int
    placements: tuple[tuple[int, tuple[int, ...]], ...]  # per leaf: data_ptr, stride

    def still_fits(self, leaves: list[Any]) -> bool:
        """Whether the leaves of this group still lie where they lay: same addresses and
        strides, in the same live storage (addresses inside a live storage belong to it)."""
        first = leaves[self.leaves[0]]
        storage = first.untyped_storage()
        if storage.data_ptr() != self.storage_ptr or storage.nbytes() < self.start + self.length:
            return False
        return all(
            (leaves[i].data_ptr(), leaves[i].stride()) == placement
            for i, placement in zip(self.leaves, self.placements, strict=True)
        )

    def source(self, leaves: list[Any]) -> torch.Tensor:
        """The staged bytes, as a uint8 tensor over the storage of the current leaves."""
        leaf = leaves[self.leaves[0]]
        raw = torch.empty(0, dtype=torch.uint8, device=leaf.device)
        return raw.set_(leaf.untyped_storage(), self.start, (self.length,), (1,))


def _byte_span(tensor: torch.Tensor) -> tuple[int, int]:
    """The bytes of its storage that ``tensor`` can reach."""
    first = tensor.storage_offset()
    last = first + sum((d - 1) * s for d, s in zip(tensor.shape, tensor.stride(), strict=True))
    return int(first * tensor.element_size()), int((last + 1) * tensor.element_size())


def _shared_storages(leaves: list[Any]) -> list[_SharedStorage]:
    """Groups of two or more tensors that share a storage. A group whose tensors reach less
    than they would take copied one by one (they overlap, or tile it) is shared; sparse
    views of a large storage are copied one by one instead (sharing would write bytes that no
    tensor holds)."""
    by_storage: dict[tuple[torch.device, int], list[int]] = {}
    for index, leaf in enumerate(leaves):
        if (
            isinstance(leaf, torch.Tensor)
            and leaf.numel() > 0
            and not leaf.is_conj()  # a lazy bit on top of the storage: copied, resolved
            and not leaf.is_neg()
        ):
            key = (leaf.device, leaf.untyped_storage().data_ptr())
            by_storage.setdefault(key, []).append(index)
    groups = []
    for (_, pointer), members in by_storage.items():
        if len(members) < 2:
            continue
        spans = [_byte_span(leaves[i]) for i in members]
        start = min(first for first, _ in spans) // 16 * 16  # aligned for every dtype
        end = max(last for _, last in spans)
        if end - start <= sum(last - first for first, last in spans):
            placements = tuple((leaves[i].data_ptr(), tuple(leaves[i].stride())) for i in members)
            groups.append(_SharedStorage(tuple(members), start, end - start, pointer, placements))
    return groups


def _layout(
    leaves: list[Any], groups: list[_SharedStorage], *, parted: bool
) -> tuple[list[ArraySpec], list[int], int]:
    """The specs of the leaves (views for those in a shared storage) followed by one spec
    per shared storage; which source each data entry copies (a leaf index, or ``-1 - g``
    for storage ``g``); the data size. For a data file written as ``parted``, an array
    with a part size starts at a multiple of it (``_chunks.part_size``)."""
    in_group = {leaf: g for g, group in enumerate(groups) for leaf in group.leaves}
    specs: list[ArraySpec] = []
    sources: list[int] = []
    offset = 0

    def place(spec: ArraySpec) -> ArraySpec:
        nonlocal offset
        alignment = (part_size(spec.nbytes) if parted else None) or ALIGNMENT
        offset = -(-offset // alignment) * alignment
        placed = dataclasses.replace(spec, offset=offset)
        offset += spec.nbytes
        return placed

    for index, leaf in enumerate(leaves):
        g = in_group.get(index)
        if g is None:
            specs.append(place(ArraySpec.of(leaf, 0)))
            sources.append(index)
            continue
        plain = ArraySpec.of(leaf, 0)
        first, _ = _byte_span(leaf)
        specs.append(
            dataclasses.replace(
                plain,
                nbytes=0,
                view_of=len(leaves) + g,
                stride=tuple(leaf.stride()),
                storage_offset=(first - groups[g].start) // leaf.element_size(),
            )
        )
    for g, group in enumerate(groups):
        device = str(leaves[group.leaves[0]].device)
        storage = ArraySpec("torch", "uint8", (group.length,), 0, group.length, device)
        specs.append(place(dataclasses.replace(storage, storage=True)))
        sources.append(-1 - g)
    return specs, sources, offset


_TORCH_TYPES = frozenset({torch.Tensor, torch.nn.Parameter})


def _signature(leaves: list[Any]) -> tuple[list[Any], ...] | None:
    """What the layout of ``leaves`` depends on (types, dtypes, shapes; for tensors also
    devices, layouts, ``requires_grad``), as one list per attribute: cheap to build and to
    compare for many small leaves. None when a leaf cannot say (e.g. a nested tensor has no
    shape)."""
    types = [type(leaf) for leaf in leaves]
    tensors = (
        leaves
        if _TORCH_TYPES.issuperset(types)
        else [leaf for leaf in leaves if not isinstance(leaf, np.ndarray)]
    )
    try:
        return (
            types,
            [leaf.dtype for leaf in leaves],
            [leaf.shape for leaf in leaves],
            [tensor.device for tensor in tensors],
            [tensor.layout for tensor in tensors],
            [tensor.requires_grad for tensor in tensors],
        )
    except (RuntimeError, AttributeError):
        return None


@dataclass
class _StagingLayout:
    """Where each leaf of a state goes in a buffer; reused by the next save whose leaves
    have the same signature, so that a state of many small tensors is placed once."""

    signature: tuple[list[Any], ...]
    parted: bool
    specs: list[ArraySpec]
    nbytes: int
    groups: list[_SharedStorage]
    sources: list[int] | None  # per data entry, its leaf (or -1 - g); None: the leaves
    copies: CopyPlan  # per data entry, its view of the buffer and how it is copied there

    def fits(self, leaves: list[Any], *, parted: bool) -> bool:
        """Whether ``leaves`` can be staged with this placement."""
        if self.parted != parted or self.signature != _signature(leaves):
            return False
        # Tensors that shared a storage must still share it, the same way. (Tensors that
        # came to share one since keep being copied apart until the placement changes.)
        return all(group.still_fits(leaves) for group in self.groups)

    def data_sources(self, leaves: list[Any]) -> list[Any]:
        if self.sources is None:
            return leaves
        return _entry_sources(leaves, self.sources, self.groups)


def _entry_sources(
    leaves: list[Any], sources: list[int], groups: list[_SharedStorage]
) -> list[Any]:
    """What each data entry copies: its leaf, or the bytes of a shared storage."""
    return [leaves[i] if i >= 0 else groups[-1 - i].source(leaves) for i in sources]


def _plan(leaves: list[Any], buffer: HostBuffer, *, parted: bool) -> _StagingLayout:
    groups = _shared_storages(leaves)
    specs, sources, nbytes = _layout(leaves, groups, parted=parted)
    data_specs = [s for s in specs if s.view_of is None]
    needs_pinned = any(
        isinstance(leaf, torch.Tensor) and leaf.device.type == "cuda" for leaf in leaves
    )
    buffer.ensure(nbytes, pinned=needs_pinned)
    buffer.clear_padding(data_specs, nbytes)
    copies = CopyPlan.of(
        _entry_sources(leaves, sources, groups), data_specs, buffer.tensor, buffer.array
    )
    signature = _signature(leaves)
    assert signature is not None
    return _StagingLayout(
        signature, parted, specs, nbytes, groups, sources if groups else None, copies
    )


def stage_state(state: object, buffer: HostBuffer, *, parted: bool = False) -> StagedState:
    """Capture ``state`` into ``buffer``; when this returns, later changes to ``state`` (in
    place or not, on any device) do not change what is captured. ``parted``: the data
    file will be written as parts (incremental saves): large arrays start where parts do.

    A save whose leaves have the same types, dtypes, shapes and devices as the buffer's
    previous save reuses its placement and its copy plan (``_staging_copy``): no allocation,
    no per-leaf bookkeeping.

    Raises whatever cloudpickle raises for an object it cannot serialise, before anything is
    written.
    """
    encoder, tree, objects = _encoded(state, compact=True)
    leaves = encoder.leaves
    layout = buffer.staging_layout
    if layout is None or not layout.fits(leaves, parted=parted):
        if encoder.compacted and not all(map(is_array_leaf, leaves)):
            # A compact dict node took a leaf that must be pickled instead: encode again.
            encoder, tree, objects = _encoded(state, compact=False)
            leaves = encoder.leaves
        layout = buffer.staging_layout = _plan(leaves, buffer, parted=parted)
    layout.copies.run(layout.data_sources(leaves))
    return StagedState(
        tree=tree, arrays=layout.specs, objects=objects, buffer=buffer, nbytes=layout.nbytes
    )


def _encoded(state: Any, *, compact: bool) -> tuple[TreeEncoder, JsonTree, bytes | None]:
    """``state`` encoded: the encoder (its leaves), the tree, the pickled objects."""
    encoder = TreeEncoder(compact=compact)
    tree = encoder.encode(state)
    return encoder, tree, encoder.pickle_objects()
