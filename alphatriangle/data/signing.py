"""Signed steps: an HMAC over the manifest, and a cryptographic digest of every file.

xxh3 checksums catch accidents (a flipped bit, a truncated copy), not an adversary: anyone
who edits a file can recompute its xxh3 and the manifest's. With a signing key, every file is
also digested with SHA-256 and the manifest carries an HMAC-SHA256 of its canonical bytes; a
reader holding the same key refuses a step that is unsigned or whose manifest or any file was
changed. What it does not protect against: a holder of the key, replaying an older genuine
step under its own step number (the step number is signed, so not under another), or deleting
whole steps.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

__all__ = ["FILE_DIGEST", "MIN_KEY_BYTES", "manifest_signature", "new_file_digest"]

FILE_DIGEST = "sha256"
SIGNATURE_ALGORITHM = "hmac-sha256"
MIN_KEY_BYTES = 16


def new_file_digest() -> Any:
    """A streaming SHA-256 (``update`` releases the GIL on large buffers)."""
    return hashlib.sha256()


def manifest_signature(unsigned_manifest: Mapping[str, Any], key: bytes, canonical: bytes) -> str:
    """The HMAC of a manifest's canonical bytes (``canonical``, without ``signature`` and
    ``checksum``); ``unsigned_manifest`` is only checked to hold neither."""
    assert "signature" not in unsigned_manifest and "checksum" not in unsigned_manifest
    return hmac.new(key, canonical, hashlib.sha256).hexdigest()


def signatures_match(expected: str, actual: object) -> bool:
    return isinstance(actual, str) and hmac.compare_digest(expected, actual)
