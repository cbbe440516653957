"""The manifest, ``manifest.json``: what a step holds, in both directions (build and seal on
save, read, parse and check on restore), so that writer and reader cannot drift apart.

It lists the format version, the step, its wall time and metrics, its items, every file of
the step with its size and xxh3-64 checksum (and, with a signing key, a SHA-256 digest per
file and an HMAC ``signature``: see ``signing.py``), the library versions, and last a
checksum of the manifest's own bytes (:func:`seal`). It is written last: a step whose
manifest reads back is complete.

Reading is strict: its own checksum, the field types (``format_version`` an int, ``step`` the
directory's step, items and file names plain names, sizes non-negative ints, checksums hex),
each item's data and index files listed (a data file in parts: in ``parted``, its parts
listed in order, ``_chunks.py``); any violation raises ``CheckpointCorruptError``
naming the file, a signature that does not verify ``CheckpointSignatureError``.
Cost: one small read and one JSON parse (retention reads one per step, once); reading bytes
parsed moments ago (the same step listed, then restored) costs the read and a lookup.
"""

from __future__ import annotations

import math
import numbers
import os
import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xxhash

from alphatriangle.data.checkpoint._chunks import open_regular, parted_problem
from alphatriangle.data.checkpoint._fields import (
    CHECKSUM,
    HEX_PATTERNS,
    NON_FINITE,
    ParsedCache,
    canonical,
    is_int,
    is_number,
    parse_json,
)
from alphatriangle.data.checkpoint.errors import CheckpointSignatureError, corrupt_file
from alphatriangle.data.checkpoint.layout import (
    FILE_NAME,
    ITEM_NAME,
    MANIFEST_NAME,
    data_file,
    index_file,
)
from alphatriangle.data.checkpoint.signing import FILE_DIGEST, manifest_signature, signatures_match

__all__ = [
    "CHECKSUM",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "Manifest",
    "build_manifest",
    "canonical",
    "check_metrics",
    "read_manifest",
    "seal",
    "unseal",
]

FORMAT_NAME = "alphatriangle-checkpoint"
FORMAT_VERSION = 4  # 2: compact dict nodes ("da", "oda"); 3: data files in 1 MiB parts
# ("parted"); 4: parts cut where the arrays lie (sizes in whole pages, each listed)
MAX_MANIFEST_BYTES = 64 << 20


@dataclass(frozen=True)
class Manifest:
    """The parsed ``manifest.json`` of one committed step."""

    step: int
    wall_time: float
    metrics: Mapping[str, float]
    items: tuple[str, ...]
    files: Mapping[str, Mapping[str, Any]]
    raw: Mapping[str, Any]


# -- save: build and seal ---------------------------------------------------------------------


def _versions() -> dict[str, str]:
    from alphatriangle import __version__

    return {
        "alphatriangle": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _encode_metric(value: float) -> float | str:
    value = float(value)
    return value if math.isfinite(value) else repr(value)  # "nan", "inf", "-inf"


def check_metrics(metrics: Mapping[str, float] | None) -> dict[str, float]:
    """Metric values as floats: real numbers only (a bool, a string such as ``"1.5"`` or a
    complex number is refused with TypeError; an int too large for a float with ValueError).
    A one-element tensor or array counts as its number."""
    if metrics is None:
        return {}
    checked: dict[str, float] = {}
    for name, given in metrics.items():
        if not isinstance(name, str):
            raise TypeError(f"metric names must be str, got {name!r}")
        value: object = given
        if (isinstance(given, torch.Tensor) and given.numel() == 1) or (
            isinstance(given, np.ndarray) and given.size == 1
        ):
            value = given.item()
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"metric {name!r} must be a real number, got {value!r:.80}")
        try:
            checked[name] = float(value)
        except OverflowError:
            raise ValueError(f"metric {name!r} is too large for a float: {value!r:.40}") from None
    return checked


def build_manifest(
    step: int,
    *,
    wall_time: float,
    metrics: Mapping[str, float],
    items: list[str],
    files: Mapping[str, Any],
    parted: Mapping[str, Any] | None = None,
    signing_key: bytes | None = None,
) -> dict[str, Any]:
    """The manifest of a step whose ``files`` (name: entry, as ``step_writer`` returns them)
    are written, and whose ``parted`` data files are written as parts (listed in ``files``);
    signed when ``signing_key`` is given. :func:`seal` gives its bytes."""
    manifest: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "step": step,
        "wall_time": wall_time,
        "metrics": {str(k): _encode_metric(v) for k, v in metrics.items()},
        "items": sorted(items),
        "files": dict(files),
        "versions": _versions(),
    }
    if parted:
        manifest["parted"] = dict(parted)
    if signing_key is not None:
        manifest["signature"] = manifest_signature(manifest, signing_key, canonical(manifest))
    return manifest


_SEAL = b',"checksum":"'


def seal(body: bytes) -> bytes:
    """The manifest's bytes: its canonical JSON with the checksum of exactly those bytes
    appended as a last key, so verifying needs no re-serialisation."""
    return body[:-1] + _SEAL + xxhash.xxh3_64_hexdigest(body).encode() + b'"}'


def unseal(data: bytes) -> bool:
    """Whether ``data`` ends with the checksum of the bytes before it (see :func:`seal`)."""
    cut = data.rfind(_SEAL)
    if cut < 0 or not data.endswith(b'"}'):
        return False
    claimed = data[cut + len(_SEAL) : -2]
    return xxhash.xxh3_64_hexdigest(data[:cut] + b"}").encode() == claimed


# -- restore: read, parse, check --------------------------------------------------------------


def read_manifest(
    step_dir: str | Path, step: int | None = None, *, signing_key: bytes | None = None
) -> Manifest:
    """Parse and verify ``manifest.json`` (see the module docstring). ``step``, when given,
    is the step the directory's name says: the manifest must say the same. With
    ``signing_key``, the signature is checked too."""
    # A str path: this runs for every step when retention reads 10,000 manifests.
    path = os.path.join(step_dir, MANIFEST_NAME)  # noqa: PTH118
    fd, size = open_regular(path, step)
    try:
        if size > MAX_MANIFEST_BYTES:
            raise corrupt_file(path, step, f"{size} bytes, more than a manifest can be")
        with os.fdopen(fd, "rb", closefd=False) as file:
            data = file.read()
    finally:
        os.close(fd)
    manifest = _PARSED.get(data)
    if manifest is None:
        manifest = _parse_bytes(data, path, step)
        _PARSED.put(data, manifest)
    elif step is not None and manifest.step != step:
        raise corrupt_file(
            path, step, f"says step {manifest.step}, but lies in the directory of step {step}"
        )
    if signing_key is not None:
        _check_signature(manifest.raw, signing_key, path, manifest.step)
    return manifest


_PARSED: ParsedCache[bytes, Manifest] = ParsedCache(64)  # by the manifest's bytes


def _parse_bytes(data: bytes, path: str, step: int | None) -> Manifest:
    """A manifest's bytes parsed and checked (everything but the signature)."""
    raw = parse_json(data, path, step)
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
        raise corrupt_file(path, step, "not a checkpoint manifest")
    version: Any = raw.get("format_version")
    if not is_int(version) or version < 1:
        raise corrupt_file(path, step, f"format_version {version!r} is not a positive integer")
    if version > FORMAT_VERSION:
        raise corrupt_file(
            path,
            step,
            f"format version {version} is newer than this library reads ({FORMAT_VERSION}); "
            "upgrade alphatriangle",
        )
    if not unseal(data):
        raise corrupt_file(path, step, "manifest checksum mismatch (edited or damaged)")
    return _parse_manifest(raw, path, step)


def _object_field(raw: dict[str, Any], key: str, bad: Callable[[str], Exception]) -> dict[str, Any]:
    value = raw.get(key)
    if not isinstance(value, dict):
        raise bad(f"{key} is not an object")
    return value


def _parse_manifest(raw: dict[str, Any], path: str, step: int | None) -> Manifest:
    def bad(why: str) -> Exception:
        return corrupt_file(path, step, why)

    said: Any = raw.get("step")
    if not is_int(said) or said < 0:
        raise bad(f"step {said!r} is not a non-negative integer")
    if step is not None and said != step:
        raise bad(f"says step {said}, but lies in the directory of step {step}")
    if not is_number(raw.get("wall_time")):
        raise bad(f"wall_time {raw.get('wall_time')!r} is not a finite number")
    metrics = _object_field(raw, "metrics", bad)
    for name, value in metrics.items():
        if not (is_number(value) or value in NON_FINITE):
            raise bad(f"metric {name!r} is {value!r}, not a number")
    items = raw.get("items")
    if (
        not isinstance(items, list)
        or not all(isinstance(i, str) and ITEM_NAME.match(i) for i in items)
        or len(set(items)) != len(items)
    ):
        raise bad(f"items {items!r:.200} is not a list of distinct item names")
    files = _object_field(raw, "files", bad)
    for name, entry in files.items():
        if not FILE_NAME.match(name) or name == MANIFEST_NAME:
            raise bad(f"lists {name!r:.100}, which is not a plain file name of a step")
        if not isinstance(entry, dict) or not is_int(entry.get("size")) or entry["size"] < 0:
            raise bad(f"the entry of {name} has no valid size")
        for digest, pattern in HEX_PATTERNS.items():
            value = entry.get(digest)
            if (digest == CHECKSUM or value is not None) and not (
                isinstance(value, str) and pattern.match(value)
            ):
                raise bad(f"the entry of {name} has no valid {digest}")
    parted = raw.get("parted", {})
    problem = parted_problem(files, parted, HEX_PATTERNS)
    if problem is not None:
        raise bad(problem)
    for item in items:
        for name in (data_file(item), index_file(item)):
            if name not in files and name not in parted:
                raise bad(f"item {item!r} has no {name}")
    return Manifest(
        step=said,
        wall_time=float(raw["wall_time"]),
        metrics={k: float(v) for k, v in metrics.items()},
        items=tuple(items),
        files=files,
        raw=raw,
    )


def _check_signature(raw: Mapping[str, Any], key: bytes, path: str, step: int) -> None:
    unsigned = {k: v for k, v in raw.items() if k not in ("signature", "checksum")}
    if "signature" not in raw:
        raise CheckpointSignatureError(
            f"{path} is not signed, and a signing key is set: refusing step {step}",
            path=path,
            step=step,
        )
    expected = manifest_signature(unsigned, key, canonical(unsigned))
    if not signatures_match(expected, raw["signature"]):
        raise CheckpointSignatureError(
            f"{path}: the signature does not match (tampered, or signed with another key): "
            f"refusing step {step}",
            path=path,
            step=step,
        )
    for name, entry in raw["files"].items():
        if FILE_DIGEST not in entry:
            raise CheckpointSignatureError(
                f"{path}: {name} has no {FILE_DIGEST} digest in a signed manifest",
                path=path,
                step=step,
            )
