"""Per-array checksums verified beside the reads: the reader puts each array's bytes as they
land, a second thread hashes them (xxh3 releases the GIL), and :meth:`ArrayChecks.finish`
says which array failed. Used by partial restores and in-place restores, which read arrays
one by one instead of the whole data file. Cost: one thread per read; hashing overlaps the
next read."""

from __future__ import annotations

import queue
import threading

import xxhash

__all__ = ["ArrayChecks"]


class ArrayChecks:
    """Checks ``checksums[position]`` against the bytes put for each position (nothing when
    not ``enabled``). The bytes must not change until :meth:`finish` returns."""

    def __init__(self, checksums: list[str | None], *, enabled: bool) -> None:
        self._checksums = checksums
        self._enabled = enabled
        self._queue: queue.SimpleQueue[tuple[int, memoryview] | None] = queue.SimpleQueue()
        self._mismatches: list[int] = []
        self._thread = threading.Thread(target=self._run, name="checksum", daemon=True)
        if enabled:
            self._thread.start()

    def _run(self) -> None:
        while (entry := self._queue.get()) is not None:
            position, view = entry
            if xxhash.xxh3_64_hexdigest(view) != self._checksums[position]:
                self._mismatches.append(position)

    def put(self, position: int, view: memoryview) -> None:
        if self._enabled:
            self._queue.put((position, view))

    def finish(self) -> int | None:
        """Wait for every check; the lowest position whose bytes did not match, or None.
        Always call it (in a ``finally``): it ends the thread."""
        if self._enabled and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        return min(self._mismatches) if self._mismatches else None
