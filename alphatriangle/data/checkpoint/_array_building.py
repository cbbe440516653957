"""Building a restored item's tensors and arrays from the bytes of its data file.

Two ways in, one set of builders: :func:`arrays_in` makes every array of an item from the
whole data file's bytes (mapped or copied, then verified by the caller: the full restore),
:class:`ArrayReader` reads arrays one by one with ``pread``, each verified by its own
checksum (the partial and in-place restores). CPU tensors and arrays are views of those
bytes (no copy); CUDA tensors are streamed through pinned chunks (``mapping.py``); other
devices are copied with ``.to(device)``; a view saved of a shared storage is made of the
restored storage (:func:`make_view`), as the saved tensors shared theirs.

Cost: one object per array; no copy on the CPU.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xxhash

from alphatriangle.data.checkpoint._chunks import PartedFile
from alphatriangle.data.checkpoint._devices import DeviceMap
from alphatriangle.data.checkpoint._fields import CHECKSUM
from alphatriangle.data.checkpoint._verified_files import ArrayChecks
from alphatriangle.data.checkpoint.arrays import TORCH_DTYPES, ArraySpec
from alphatriangle.data.checkpoint.errors import CheckpointError, corrupt_file
from alphatriangle.data.checkpoint.index import Index
from alphatriangle.data.checkpoint.mapping import PinnedChunks, stream_to_device

__all__ = ["ArrayReader", "array_in", "arrays_in", "finish_tensor", "make_view", "mark"]


def array_in(arena: np.ndarray[Any, np.dtype[np.uint8]], spec: ArraySpec) -> Any:
    """The array ``spec`` describes, as a view of ``arena`` (the data file's bytes).

    A torch tensor gets a storage of its own covering just its bytes (saving it writes only
    those); the memory is shared and returned when the last array of the item is freed.
    """
    if spec.framework == "torch":
        dtype = TORCH_DTYPES[spec.dtype]
        if spec.nbytes == 0:
            return torch.empty(spec.shape, dtype=dtype)
        count = spec.nbytes // dtype.itemsize
        tensor = torch.frombuffer(arena, dtype=dtype, count=count, offset=spec.offset)
        # A 1-d tensor already has its shape: a view per tensor is a microsecond each.
        return tensor if spec.shape == (count,) else tensor.view(spec.shape)
    region = arena[spec.offset : spec.offset + spec.nbytes]
    return region.view(np.dtype(spec.dtype)).reshape(spec.shape)


def target_device(spec: ArraySpec, map_location: Any, step_dir: Path, step: int) -> torch.device:
    device = DeviceMap.of(map_location)(spec.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError(
            f"step {step} holds tensors saved on {spec.device}, and this process has no CUDA "
            "device; pass map_location='cpu' to restore them on the CPU",
            path=step_dir,
            step=step,
        )
    return device


def finish_tensor(
    tensor: torch.Tensor, spec: ArraySpec, map_location: Any, step_dir: Path, step: int
) -> torch.Tensor:
    device = target_device(spec, map_location, step_dir, step)
    if device.type != "cpu":
        tensor = tensor.to(device)
    return mark(tensor, spec)


def mark(tensor: torch.Tensor, spec: ArraySpec) -> torch.Tensor:
    if spec.parameter:
        return torch.nn.Parameter(tensor, requires_grad=spec.requires_grad)
    if spec.requires_grad:
        tensor.requires_grad_(True)
    return tensor


def make_view(storage: torch.Tensor, spec: ArraySpec) -> torch.Tensor:
    """The tensor ``spec`` places in a restored shared storage (a uint8 tensor that starts
    its own storage, on the device it was restored to): every view of one storage shares
    its memory, as the saved tensors did."""
    assert spec.stride is not None
    dtype = TORCH_DTYPES[spec.dtype]
    usable = storage.numel() // dtype.itemsize * dtype.itemsize
    typed = storage[:usable].view(dtype)
    view = torch.as_strided(typed, spec.shape, spec.stride, spec.storage_offset)
    return mark(view, spec)


def arrays_in(
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
    devices: dict[str, torch.device] = {}  # per saved device: resolved once per restore
    for position, spec in enumerate(specs):
        if spec.view_of is not None:
            continue
        if spec.framework != "torch":
            arrays[position] = array_in(arena, spec)
            continue
        device = devices.get(spec.device)
        if device is None:
            device = devices[spec.device] = target_device(spec, map_location, step_dir, step)
        if device.type == "cuda" and spec.nbytes:
            streamed.setdefault(device, []).append(position)
        elif device.type == "cpu":
            arrays[position] = mark(array_in(arena, spec), spec)
        else:
            arrays[position] = mark(array_in(arena, spec).to(device), spec)
    for device, positions in streamed.items():
        regions = [(specs[p].offset, specs[p].nbytes) for p in positions]
        filled = stream_to_device(arena, regions, device, pinned or PinnedChunks())
        for position, raw in zip(positions, filled, strict=True):
            spec = specs[position]
            arrays[position] = mark(raw.view(TORCH_DTYPES[spec.dtype]).view(spec.shape), spec)
    return arrays


ALIGNMENT_GAP = 4096  # arrays closer than this are read in one go, gap included


def _end(spec: ArraySpec) -> int:
    return spec.offset + spec.nbytes


class ArrayReader(list[Any]):
    """The item's arrays, each read from the data file (``pread``) and verified against its
    own checksum the first time it is asked for: a partial restore reads only those bytes."""

    def __init__(
        self,
        fd: int | PartedFile,
        path: Path,
        index: Index,
        step: int,
        *,
        finish: Any,
        verify: bool,
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
                self.pread(region.data, first)
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
        raise corrupt_file(self._path, self._step, why)

    def pread(self, view: memoryview, offset: int) -> None:
        if isinstance(self._fd, PartedFile):
            self._fd.pread(view, offset)
            return
        filled = 0
        while filled < view.nbytes:
            got = os.preadv(self._fd, [view[filled:]], offset + filled)
            if not got:
                raise corrupt_file(self._path, self._step, "truncated while reading")
            filled += got

    def _build(self, position: int, buffer: np.ndarray[Any, np.dtype[np.uint8]]) -> Any:
        spec = self._index.specs[position]
        array = array_in(buffer, dataclasses.replace(spec, offset=0))
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
            self._loaded[position] = make_view(self[spec.view_of], spec)
            return self._loaded[position]
        buffer = np.empty(spec.nbytes, dtype=np.uint8)
        self.pread(buffer.data, spec.offset)
        expected = self._index.checksums[position]
        if self._verify and xxhash.xxh3_64_hexdigest(buffer.data) != expected:
            self.refuse(position)
        self._loaded[position] = self._build(position, buffer)
        return self._loaded[position]
