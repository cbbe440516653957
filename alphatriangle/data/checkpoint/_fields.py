"""The strict field checks every parser of a step's JSON shares (manifest, index): JSON that
holds no NaN or infinity, exact ints, finite numbers, hex digests, and the one spelling of a
non-finite float; and :class:`ParsedCache`, the last parses kept by the bytes parsed.
Guarantee: a field that fails a check is never used; the caller names the file in a
:class:`~alphatriangle.data.checkpoint.errors.CheckpointCorruptError`. Cost: nothing beyond
``json``."""

from __future__ import annotations

import json
import math
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from typing import Any, Generic, TypeVar

from alphatriangle.data.checkpoint.errors import corrupt_file
from alphatriangle.data.checkpoint.signing import FILE_DIGEST

__all__ = [
    "CHECKSUM",
    "HEX_PATTERNS",
    "NON_FINITE",
    "ParsedCache",
    "canonical",
    "is_int",
    "is_number",
    "parse_json",
]

CHECKSUM = "xxh3_64"
HEX_PATTERNS = {CHECKSUM: re.compile(r"^[0-9a-f]{16}$"), FILE_DIGEST: re.compile(r"^[0-9a-f]{64}$")}
NON_FINITE = ("nan", "inf", "-inf")  # repr() of the non-finite floats, as JSON strings


def canonical(data: Mapping[str, Any]) -> bytes:
    """The canonical JSON bytes of ``data``: sorted keys, no spaces, no NaN."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def parse_json(data: bytes, path: str | os.PathLike[str], step: int | None) -> Any:
    """``data`` parsed as strict JSON (no NaN, no Infinity); anything else is corruption."""
    try:
        return json.loads(data, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise corrupt_file(path, step, f"not valid JSON ({type(exc).__name__}: {exc})") from None


def is_int(value: object) -> bool:
    """An int, and not a bool or a float that happens to be whole."""
    return type(value) is int


def is_number(value: object) -> bool:
    """An int or a finite float."""
    return type(value) is int or (type(value) is float and math.isfinite(value))


_Key = TypeVar("_Key", bound=Hashable)
_Parsed = TypeVar("_Parsed")


class ParsedCache(Generic[_Key, _Parsed]):
    """The last parses of a step's JSON files, keyed by the bytes parsed (with whatever else
    they were checked against): reading the same bytes again (a step listed, then restored;
    a step restored again) skips parsing and checking them, never reading them, and bytes
    that changed are parsed anew. Bounded (least recently used out); safe across threads. A
    parse is shared by every reader of those bytes: read only."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: OrderedDict[_Key, _Parsed] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: _Key) -> _Parsed | None:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
            return found

    def put(self, key: _Key, parsed: _Parsed) -> None:
        with self._lock:
            self._entries[key] = parsed
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
