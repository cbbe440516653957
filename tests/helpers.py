"""Shared by tests and by the child processes they start."""

from __future__ import annotations

import math
import sys
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("workers.py")


def assert_tree_equal(actual: Any, expected: Any, path: str = "state") -> None:
    """Same containers, same types, same dtypes, shapes and bytes (NaN-safe)."""
    assert type(actual) is type(expected), f"{path}: {type(actual)} != {type(expected)}"
    if isinstance(expected, torch.Tensor):
        assert actual.dtype == expected.dtype, f"{path}: dtype {actual.dtype} != {expected.dtype}"
        assert actual.shape == expected.shape, f"{path}: shape {actual.shape} != {expected.shape}"
        assert actual.device == expected.device, f"{path}: device"
        assert actual.requires_grad == expected.requires_grad, f"{path}: requires_grad"
        if expected.numel():
            a = actual.detach().cpu().contiguous().reshape(-1)
            e = expected.detach().cpu().contiguous().reshape(-1)
            assert bytes(a.view(torch.uint8).numpy()) == bytes(e.view(torch.uint8).numpy()), path
    elif isinstance(expected, np.ndarray):
        assert actual.dtype == expected.dtype, f"{path}: dtype {actual.dtype} != {expected.dtype}"
        assert actual.shape == expected.shape, f"{path}: shape"
        if expected.dtype.hasobject:
            assert actual.tolist() == expected.tolist(), path
        else:
            assert (
                np.ascontiguousarray(actual).tobytes() == np.ascontiguousarray(expected).tobytes()
            )
    elif isinstance(expected, (dict, OrderedDict)):
        assert list(actual.keys()) == list(expected.keys()), f"{path}: keys"
        for key in expected:
            assert_tree_equal(actual[key], expected[key], f"{path}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), f"{path}: length"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_tree_equal(a, e, f"{path}[{i}]")
    elif isinstance(expected, float) and math.isnan(expected):
        assert math.isnan(actual), f"{path}: expected NaN"
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


def state_for_step(step: int, megabytes: float = 1.0) -> dict[str, Any]:
    """A deterministic state whose every byte depends on ``step``."""
    generator = torch.Generator().manual_seed(step)
    n = max(1, int(megabytes * (1 << 20) / 4 / 3))
    return {
        "model": OrderedDict(
            (f"layer{i}.weight", torch.randn(n, generator=generator)) for i in range(3)
        ),
        "buffer": np.full(1000, step, dtype=np.int64),
        "step": step,
        "note": f"step {step}",
    }


def python() -> list[str]:
    return [sys.executable, str(WORKER)]


def forge_step(
    step_dir: Path,
    *,
    files: dict[str, bytes] | None = None,
    index: Callable[[dict[str, Any]], None] | None = None,
    manifest: Callable[[dict[str, Any]], None] | None = None,
    item: str = "state",
) -> None:
    """Edit a committed step as an adversary would: replace files, edit the index or the
    manifest, and recompute every xxh3 checksum and the manifest's own, so that only
    checks beyond checksums (strict reading, signatures) can tell."""
    import json

    import xxhash

    from alphatriangle.data.checkpoint.manifest import canonical, seal

    files = dict(files or {})
    if index is not None:
        parsed = json.loads((step_dir / f"{item}.index.json").read_bytes())
        index(parsed)
        files[f"{item}.index.json"] = canonical(parsed)
    raw = json.loads((step_dir / "manifest.json").read_bytes())
    raw.pop("checksum")
    for name, data in files.items():
        (step_dir / name).write_bytes(data)
        entry = raw["files"].setdefault(name, {})
        entry.update(size=len(data), xxh3_64=xxhash.xxh3_64_hexdigest(data))
    if manifest is not None:
        manifest(raw)
    (step_dir / "manifest.json").write_bytes(seal(canonical(raw)))


def committed_step(ckpt_dir: Path, state: Any = None, step: int = 1) -> Path:
    """Commit one small step (``state``, else a tensor and an int) and return its directory."""
    from alphatriangle.data import CheckpointManager, CheckpointManagerOptions, KeepAll

    with CheckpointManager(ckpt_dir, CheckpointManagerOptions(retention=KeepAll())) as m:
        m.save(step, state if state is not None else {"w": torch.arange(6.0), "n": 3})
    return ckpt_dir / f"step_{step:09d}"


def restore_error(ckpt_dir: Path, step: int = 1) -> Any:
    """The CheckpointCorruptError that restoring ``step`` raises (verify must raise one too,
    without unpickling)."""
    import pytest

    from alphatriangle.data import (
        CheckpointCorruptError,
        CheckpointManager,
        CheckpointManagerOptions,
    )

    with CheckpointManager(ckpt_dir, CheckpointManagerOptions(read_only=True)) as reader:
        with pytest.raises(CheckpointCorruptError) as info:
            reader.restore(step)
        with pytest.raises(CheckpointCorruptError):
            reader.verify(step)  # the inspecting path finds it too, without unpickling
    return info.value


def set_field(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    """An edit for :func:`forge_step`: set the field at ``path`` (keys and indices)."""

    def edit(data: dict[str, Any]) -> None:
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return edit
