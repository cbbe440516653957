"""Signed steps: an HMAC over the manifest, and a cryptographic digest of every file.

xxh3 checksums catch accidents (a flipped bit, a truncated copy), not an adversary: anyone
who edits a file can recompute its xxh3 and the manifest's. With a signing key, every file is
also digested with SHA-256 and the manifest carries an HMAC-SHA256 of its canonical bytes; a
reader holding the same key refuses a step that is unsigned or whose manifest or any file was
changed. What it does not protect against: a holder of the key, replaying an older genuine
step under its own step number (the step number is signed, so not under another), or deleting
whole steps.

The file digest (``sha256_chunked`` in a manifest's file entry) is the SHA-256 of the
concatenated SHA-256 digests of the file's consecutive 16 MiB chunks: as strong as a plain
SHA-256, and its chunks are hashed on several cores at once, so that signing a large step
costs a fraction of what one sequential SHA-256 would.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

__all__ = [
    "DIGEST_CHUNK",
    "FILE_DIGEST",
    "MIN_KEY_BYTES",
    "ChunkedDigest",
    "manifest_signature",
    "signatures_match",
]

FILE_DIGEST = "sha256_chunked"
DIGEST_CHUNK = 16 << 20
MIN_KEY_BYTES = 16

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _hash_pool() -> ThreadPoolExecutor:
    global _pool  # noqa: PLW0603 - one pool per process, made on first use
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(os.cpu_count() or 2, thread_name_prefix="sha256")
        return _pool


def _chunk_sha256(view: memoryview) -> bytes:
    return hashlib.sha256(view).digest()  # releases the GIL on large buffers


class ChunkedDigest:
    """The file digest, fed in order with buffers whose sizes are whole multiples of
    :data:`DIGEST_CHUNK` (the last may be shorter). With ``parallel`` the chunks are hashed
    on a thread pool: each buffer must then stay unchanged until :meth:`hexdigest`."""

    def __init__(self, *, parallel: bool = True) -> None:
        self._parallel = parallel
        self._chunks: list[Future[bytes] | bytes] = []
        self._ended = False  # a short chunk came: nothing may follow it

    def update(self, data: memoryview | bytes) -> None:
        view = memoryview(data).cast("B")
        for start in range(0, view.nbytes, DIGEST_CHUNK):
            if self._ended:
                raise ValueError("ChunkedDigest fed after a chunk shorter than DIGEST_CHUNK")
            chunk = view[start : start + DIGEST_CHUNK]
            self._ended = chunk.nbytes < DIGEST_CHUNK
            if self._parallel:
                self._chunks.append(_hash_pool().submit(_chunk_sha256, chunk))
            else:
                self._chunks.append(_chunk_sha256(chunk))

    def stop(self) -> None:
        """Wait for the chunks in progress (their buffers may then be reused)."""
        for chunk in self._chunks:
            if isinstance(chunk, Future):
                chunk.exception()

    def close(self) -> None:
        """The digest will not be read: nothing to do (the pool's threads end the chunks
        in progress and hold nothing of them)."""

    def hexdigest(self) -> str:
        outer = hashlib.sha256()
        for chunk in self._chunks:
            outer.update(chunk.result() if isinstance(chunk, Future) else chunk)
        return outer.hexdigest()


def manifest_signature(unsigned_manifest: Mapping[str, Any], key: bytes, canonical: bytes) -> str:
    """The HMAC of a manifest's canonical bytes (``canonical``, without ``signature`` and
    ``checksum``); ``unsigned_manifest`` is only checked to hold neither."""
    assert "signature" not in unsigned_manifest and "checksum" not in unsigned_manifest
    return hmac.new(key, canonical, hashlib.sha256).hexdigest()


def signatures_match(expected: str, actual: object) -> bool:
    return isinstance(actual, str) and hmac.compare_digest(expected, actual)
