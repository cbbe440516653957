"""Shared by the benchmark scripts: timing, the reference state, the results table."""

from __future__ import annotations

import json
import mmap
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results"


def reference_state(total_mb: float, leaves: int, *, device: str = "cpu") -> dict[str, Any]:
    """``leaves`` float32 leaves totalling ``total_mb`` MB: half tensors, half numpy arrays."""
    per_leaf = int(total_mb * 1e6 / 4 / leaves)
    generator = torch.Generator().manual_seed(0)
    state: dict[str, Any] = {}
    for i in range(leaves):
        tensor = torch.randn(per_leaf, generator=generator)
        state[f"leaf{i:03d}"] = tensor.to(device) if i % 2 == 0 else tensor.numpy()
    return state


def state_bytes(state: dict[str, Any]) -> int:
    return sum(v.nbytes if isinstance(v, np.ndarray) else v.numel() * 4 for v in state.values())


def write_one_file(blob: np.ndarray[Any, Any], path: Path) -> None:
    """``blob``'s bytes in one file with one fsync: the floor of a durable save."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(blob).cast("B")
        while view.nbytes:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


_PAGE = 4096


class DirectWrite:
    """The device's limit for a durable save of ``arrays``: their bytes, already in page-aligned
    memory (as a save's staging buffer is), written to one file with ``O_DIRECT`` (no copy
    into the page cache) and one ``fsync``. Preparing the aligned copy is not timed; call the
    object to write. Where the file system refuses ``O_DIRECT`` (tmpfs), a buffered write and
    one fsync, and ``direct`` is False."""

    def __init__(self, arrays: list[np.ndarray[Any, Any]]) -> None:
        views = [memoryview(np.ascontiguousarray(a)).cast("B") for a in arrays]
        self.size = sum(v.nbytes for v in views)
        padded = max(_PAGE, -(-self.size // _PAGE) * _PAGE)
        self._buffer = mmap.mmap(-1, padded)  # anonymous mappings are page aligned
        start = 0
        for view in views:
            self._buffer[start : start + view.nbytes] = view
            start += view.nbytes
        self.direct = True

    def __call__(self, path: Path) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        try:
            fd = os.open(path, flags | getattr(os, "O_DIRECT", 0), 0o644) if self.direct else -1
        except OSError:
            fd = -1
        if fd < 0:
            self.direct = False
            fd = os.open(path, flags, 0o644)
        try:
            view = memoryview(self._buffer)
            if not self.direct:
                view = view[: self.size]
            while view.nbytes:
                view = view[os.write(fd, view[: 64 << 20]) :]
            os.ftruncate(fd, self.size)
            os.fsync(fd)
        finally:
            os.close(fd)


def write_durably(path: Path, dump: Callable[[BinaryIO], object]) -> None:
    """``dump(file)`` into ``path``, flushed and fsynced: a synchronous peer's save."""
    with open(path, "wb") as f:
        dump(f)
        f.flush()
        os.fsync(f.fileno())


def timed(fn: Callable[[], object]) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20, 1)
    return None


def filesystem(path: Path) -> str:
    """The file system type of the mount that holds ``path`` (from /proc/mounts)."""
    path = path.resolve()
    best, kind = "", "unknown"
    for line in _read("/proc/mounts").splitlines():
        fields = line.split()
        if len(fields) >= 3 and str(path).startswith(fields[1]) and len(fields[1]) > len(best):
            best, kind = fields[1], fields[2]
    return kind


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {"python": platform.python_version()}
    for package in (
        "alphatriangle",
        "torch",
        "numpy",
        "safetensors",
        "cloudpickle",
        "orbax-checkpoint",
        "jax",
        "ray",
        "mlflow",
    ):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def machine(data_dir: Path | None = None) -> dict[str, Any]:
    """CPU model and count, memory, the file system the data is written to, the GPU, and
    library versions."""
    return {
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "filesystem": filesystem(data_dir or Path(tempfile.gettempdir())),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "versions": _versions(),
    }


def command() -> str:
    return " ".join(["python", *sys.argv])


def summary(samples: list[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "samples": samples,
    }


Seconds = float | list[float]


def report(name: str, rows: list[tuple[str, Seconds, str]], extra: dict[str, Any]) -> None:
    """Print ``rows`` (label, seconds or the seconds of each repeat, baseline label) as a
    table of medians and ratios of medians; write JSON with median, min and max of each,
    the machine and the command."""
    medians = {label: statistics.median(v) if isinstance(v, list) else v for label, v, _ in rows}
    print(f"\n{name}")
    print(f"{'measure':<44} {'median s':>9} {'min':>9} {'max':>9} {'ratio':>7}  baseline")
    out = []
    for label, value, baseline in rows:
        samples = value if isinstance(value, list) else [value]
        ratio = medians[label] / medians[baseline] if baseline else float("nan")
        print(
            f"{label:<44} {medians[label]:9.4f} {min(samples):9.4f} {max(samples):9.4f} "
            f"{ratio:7.2f}  {baseline or '-'}"
        )
        out.append(
            {
                "measure": label,
                "seconds": medians[label],
                **summary(samples),
                "baseline": baseline,
                "ratio": ratio,
            }
        )
    RESULTS.mkdir(exist_ok=True)
    payload = {
        "benchmark": name,
        "command": command(),
        "machine": machine(),
        "rows": out,
        **extra,
    }
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2))


def incremental_kinds(*, whole_first: bool) -> dict[str, bool]:
    """The two ways of saving that the incremental benchmarks compare (name: the
    ``incremental`` flag), in the order their managers are created: the one created first
    stalls a few percent longer whatever it saves."""
    kinds = {"incremental": True, "whole": False}
    return dict(reversed(kinds.items())) if whole_first else kinds


def disk_bytes(files: Iterable[Path]) -> int:
    """The bytes ``files`` take on disk, a file with several names (hard links) once."""
    inodes = {}
    for path in files:
        info = path.lstat()
        inodes[(info.st_dev, info.st_ino)] = info.st_size
    return sum(inodes.values())
