"""Stall, commit and restore of one state, against baselines measured in the same run.

    python benchmarks/bench_save.py [--mb 451] [--leaves 122] [--repeats 5] [--dir PATH]

Baselines: a plain copy of the same bytes into preallocated memory (the floor for the stall),
the same bytes written from page-aligned memory to one file with ``O_DIRECT`` and one fsync
(the device's limit: the floor for commit; the same bytes written through the page cache
are reported beside it), a raw read of that file (the floor for restore); peers:
``torch.save`` + fsync, PyTorch DCP ``async_save``.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import (
    DirectWrite,
    reference_state,
    report,
    state_bytes,
    timed,
    write_durably,
    write_one_file,
)

from alphatriangle.data import CheckpointManager, CheckpointManagerOptions, KeepLatest

OPTIONS = {"mb": 451.0, "leaves": 122, "repeats": 5}
DIRECT_FLOOR = "one file, O_DIRECT, one fsync (floor)"


def _preallocated_copy(state: dict[str, Any]) -> float:
    targets = {
        k: torch.empty_like(v) if isinstance(v, torch.Tensor) else np.empty_like(v)
        for k, v in state.items()
    }

    def copy() -> None:
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                targets[key].copy_(value)
            else:
                np.copyto(targets[key], value)

    copy()  # first touch of the pages is an allocation cost, not a copy
    return timed(copy)


def _one_file(state: dict[str, Any], path: Path) -> tuple[float, float]:
    """The same bytes, from memory already in place, in one file with one fsync: written
    with ``O_DIRECT`` from page-aligned memory (the floor), and through the page cache."""
    arrays = [(v.numpy() if isinstance(v, torch.Tensor) else v) for v in state.values()]
    writer = DirectWrite(arrays)
    floor = timed(functools.partial(writer, path))
    del writer  # its aligned copy is not held while the rest runs
    path.unlink()
    blob = np.concatenate([a.view(np.uint8).reshape(-1) for a in arrays])
    buffered = timed(lambda: write_one_file(blob, path))
    path.unlink()
    return floor, buffered


def _raw_read(path: Path) -> float:
    """Read a file into one fresh buffer: the floor for loading its bytes."""

    def read() -> None:
        with open(path, "rb", buffering=0) as f:
            data = np.empty(os.fstat(f.fileno()).st_size, dtype=np.uint8)
            f.readinto(memoryview(data))

    return timed(read)


def _torch_save(state: dict[str, Any], path: Path) -> float:
    def save() -> None:
        write_durably(path, lambda f: torch.save(state, f))

    seconds = timed(save)
    path.unlink()
    return seconds


def _dcp(state: dict[str, Any], directory: Path) -> tuple[float, float] | None:
    """PyTorch DCP async_save: (stall, save -> done)."""
    try:
        import torch.distributed.checkpoint as dcp
    except ImportError:
        return None
    tensors = {
        k: v if isinstance(v, torch.Tensor) else torch.from_numpy(v) for k, v in state.items()
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        future = dcp.async_save(tensors, checkpoint_id=str(directory))
        stall = time.perf_counter() - start
        future.result()
        done = time.perf_counter() - start
    shutil.rmtree(directory, ignore_errors=True)
    return stall, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=float, default=OPTIONS["mb"])
    parser.add_argument("--leaves", type=int, default=OPTIONS["leaves"])
    parser.add_argument("--repeats", type=int, default=OPTIONS["repeats"])
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to write (default: a temp dir)"
    )
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_save_", dir=args.dir))
    state = reference_state(args.mb, args.leaves)
    nbytes = state_bytes(state)
    print(f"state: {nbytes / 1e6:.0f} MB in {len(state)} float32 leaves; writing under {root}")

    options = CheckpointManagerOptions(retention=KeepLatest(1))
    manager = CheckpointManager(root / "ours", options)
    step = 0
    stalls, commits, restores, copies, writes, reads, torch_saves = ([] for _ in range(7))
    buffered_writes: list[float] = []
    dcp_stalls: list[float] = []
    dcp_commits: list[float] = []
    # Warm-up: the first save allocates the staging buffer; it is not what a loop pays.
    manager.save(step, state)
    manager.wait_until_finished()
    allocations_after_first = manager._pool.allocations if manager._pool else 0
    for _ in range(args.repeats):
        copies.append(_preallocated_copy(state))
        floor, buffered = _one_file(state, root / "one_file.bin")
        writes.append(floor)
        buffered_writes.append(buffered)
        step += 1
        start = time.perf_counter()
        handle = manager.save(step, state)
        stalls.append(time.perf_counter() - start)
        assert handle is not None
        step_dir = handle.result()
        commits.append(time.perf_counter() - start)
        manager.wait_until_finished()  # retention of the previous step, outside the timings
        _raw_read(step_dir / "state.data")  # both reads below find the file in the page cache
        reads.append(_raw_read(step_dir / "state.data"))
        restores.append(timed(manager.restore))
        torch_saves.append(_torch_save(state, root / "torch_save.pt"))
        dcp_result = _dcp(state, root / "dcp")
        if dcp_result:
            dcp_stalls.append(dcp_result[0])
            dcp_commits.append(dcp_result[1])
    allocations = manager._pool.allocations if manager._pool else 0
    manager.close()
    shutil.rmtree(root, ignore_errors=True)

    def med(values: list[float]) -> float:
        return float(np.median(values))

    rows = [
        ("copy into preallocated memory (floor)", med(copies), ""),
        ("alphatriangle save() stall", med(stalls), "copy into preallocated memory (floor)"),
        (DIRECT_FLOOR, med(writes), ""),
        ("one file, buffered write + fsync", med(buffered_writes), DIRECT_FLOOR),
        ("alphatriangle save -> committed", med(commits), DIRECT_FLOOR),
        ("torch.save + fsync (blocks)", med(torch_saves), DIRECT_FLOOR),
        ("raw read of the same bytes (floor)", med(reads), ""),
        ("alphatriangle restore (verified)", med(restores), "raw read of the same bytes (floor)"),
    ]
    if dcp_stalls:
        rows[2:2] = [
            ("DCP async_save stall", med(dcp_stalls), "copy into preallocated memory (floor)")
        ]
        rows.insert(6, ("DCP async_save -> done", med(dcp_commits), DIRECT_FLOOR))
    report(
        "bench_save",
        rows,
        {
            "state_bytes": nbytes,
            "leaves": len(state),
            "repeats": args.repeats,
            "staging_allocations_after_first_save": allocations - allocations_after_first,
        },
    )
    print(f"staging allocations after the first save: {allocations - allocations_after_first}")


if __name__ == "__main__":
    main()
