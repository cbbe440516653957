"""Zero-copy restore: an item's data file mapped copy-on-write and verified in one pass over
the mapped bytes; CUDA tensors streamed from the mapping to the device through reused pinned
chunks.

What a caller may rely on:

- :func:`map_data_file` returns the file's bytes as a writable ``uint8`` array over a private
  (copy-on-write) mapping: restored tensors and arrays are views of it, and writing to them
  copies the touched pages into the process, never into the file. The mapping keeps the
  file's pages reachable after the step is deleted (the disk space is returned when the last
  restored array that uses it is freed). The engine never changes a committed file in place;
  a file truncated by another program while mapped makes the next access of the lost pages
  fail with SIGBUS, as with any mapping (``torch.load(mmap=True)`` and safetensors alike).
- The full restore (``full_restore.py``) checks the file's digest over the mapped bytes on
  a thread of its own while it builds the arrays or streams them to the device, and returns
  nothing before the digest matched.
- :class:`PinnedChunks` holds two pinned host chunks and a copy stream per device, allocated
  on first use and reused by every later restore; :func:`stream_to_device` copies regions of
  the mapping into them and from them to fresh device tensors, so that copying chunk k + 1
  overlaps the transfer of chunk k.
"""

from __future__ import annotations

import mmap
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["PinnedChunks", "map_data_file", "plan_chunks", "stream_to_device"]

PINNED_CHUNK = 64 << 20


def map_data_file(fd: int, size: int) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """The ``size`` bytes of the open file ``fd`` as a writable copy-on-write array (the
    descriptor may be closed afterwards)."""
    if size == 0:
        return np.empty(0, dtype=np.uint8)
    # No MADV_WILLNEED: the kernel's readahead for the sequential checksum pass reads a cold
    # file as fast (measured from 10 MB to 1 GB), and on a cached file the advice costs
    # about 0.1 ms per restore.
    mapping = mmap.mmap(fd, size, access=mmap.ACCESS_COPY)
    return np.frombuffer(mapping, dtype=np.uint8)


@dataclass(frozen=True)
class Piece:
    """Bytes ``[source, source + nbytes)`` of the file go to region ``region`` at
    ``destination``, through the pinned chunk at ``chunk_offset``."""

    region: int
    destination: int
    source: int
    nbytes: int
    chunk_offset: int


def plan_chunks(regions: Sequence[tuple[int, int]], chunk_bytes: int) -> list[list[Piece]]:
    """Pack the ``(offset, nbytes)`` regions of a file, in file order, into chunks of at
    most ``chunk_bytes``: a region larger than a chunk is split across several, small ones
    share one. Every byte of every region appears in exactly one piece."""
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be >= 1, got {chunk_bytes}")
    chunks: list[list[Piece]] = []
    current: list[Piece] = []
    used = 0
    order = sorted(range(len(regions)), key=lambda i: regions[i][0])
    for region in order:
        offset, nbytes = regions[region]
        done = 0
        while done < nbytes:
            if used == chunk_bytes:
                chunks.append(current)
                current, used = [], 0
            take = min(nbytes - done, chunk_bytes - used)
            current.append(Piece(region, done, offset + done, take, used))
            used += take
            done += take
    if current:
        chunks.append(current)
    return chunks


class PinnedChunks:
    """Two pinned host chunks and a copy stream per CUDA device, reused across restores."""

    def __init__(self, chunk_bytes: int = PINNED_CHUNK) -> None:
        self.chunk_bytes = chunk_bytes
        self._per_device: dict[torch.device, tuple[list[torch.Tensor], Any, list[Any]]] = {}
        self.lock = threading.Lock()  # held by a restore while it uses the chunks

    def acquire(self, device: torch.device) -> tuple[list[torch.Tensor], Any, list[Any]]:
        """(pinned buffers, stream, one event per buffer) for ``device``; callers hold
        :attr:`lock` while they use them."""
        found = self._per_device.get(device)
        if found is None:
            buffers = [
                torch.empty(self.chunk_bytes, dtype=torch.uint8, pin_memory=True) for _ in range(2)
            ]
            stream = torch.cuda.Stream(device=device)  # type: ignore[no-untyped-call]
            events = [torch.cuda.Event() for _ in buffers]  # type: ignore[no-untyped-call]
            found = self._per_device[device] = (buffers, stream, events)
        return found


def stream_to_device(
    data: np.ndarray[Any, np.dtype[np.uint8]],
    regions: Sequence[tuple[int, int]],
    device: torch.device,
    pinned: PinnedChunks,
) -> list[torch.Tensor]:
    """One new ``uint8`` device tensor per ``(offset, nbytes)`` region of ``data``, filled
    through the pinned chunks: the host copy into one chunk overlaps the transfer of the
    other. Returns when every transfer has completed."""
    outputs = [torch.empty(nbytes, dtype=torch.uint8, device=device) for _, nbytes in regions]
    source = torch.from_numpy(data) if data.size else torch.empty(0, dtype=torch.uint8)
    with pinned.lock:
        buffers, stream, events = pinned.acquire(device)
        # The outputs were allocated on the caller's stream: ours writes them only after it.
        stream.wait_stream(torch.cuda.current_stream(device))
        for index, pieces in enumerate(plan_chunks(regions, pinned.chunk_bytes)):
            slot = index % len(buffers)
            buffer, event = buffers[slot], events[slot]
            event.synchronize()  # the transfer that last used this chunk is done
            for piece in pieces:
                buffer[piece.chunk_offset : piece.chunk_offset + piece.nbytes].copy_(
                    source[piece.source : piece.source + piece.nbytes]
                )
            with torch.cuda.stream(stream):
                for piece in pieces:
                    target = outputs[piece.region]
                    target[piece.destination : piece.destination + piece.nbytes].copy_(
                        buffer[piece.chunk_offset : piece.chunk_offset + piece.nbytes],
                        non_blocking=True,
                    )
                event.record(stream)
        stream.synchronize()  # filled on our stream: done before the caller sees them
    return outputs
