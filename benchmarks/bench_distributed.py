"""Several ranks: this engine's multi-rank save and restore against PyTorch DCP's, one run.

    python benchmarks/bench_distributed.py [--ranks 2] [--mb 100] [--repeats 5] [--dir PATH]

Each of ``--ranks`` spawned processes (gloo on CPU) holds ``--mb`` MB of float32 DTensors
row-sharded over the ranks (4 MB local shards). Per repeat, after one warm-up of each:

- **stall**: how long the call blocks each rank (the longest rank counts):
  ``CheckpointManager(process_group=...).save`` against DCP ``async_save`` (thread
  executor, its default stager); the floor is a copy of the same bytes into preallocated
  memory;
- **commit**: save called -> the step durable and known to every rank (the longest rank):
  ``save`` + ``handle.result()`` against ``async_save`` + its future;
- **restore**: ``restore(step, target=...)`` into preallocated DTensors of the same layout,
  page cache warm, against ``dcp.load`` with its ``FileSystemReader``; **resharded
  restore**: into DTensors sharded by columns instead of rows (every rank reads pieces of
  every stored chunk).

Both save with a gloo group of their own. Our restore verifies every region it reads (xxh3);
DCP's verifies nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _common import report
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint import async_save as dcp_async_save
from torch.distributed.checkpoint import load as dcp_load
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

SHARD_MB = 4


def _state(world: int, mb: int, placement: Any, fill: float | None) -> dict[str, DTensor]:
    mesh = init_device_mesh("cpu", (world,))
    rows, columns = 1024 * world, SHARD_MB * (1 << 20) // 4 // 1024
    state = {}
    generator = torch.Generator().manual_seed(0)
    for i in range(mb // SHARD_MB):
        full = torch.randn(rows, columns, generator=generator) if fill is None else None
        if full is None:
            full = torch.full((rows, columns), fill)
        state[f"layer{i:03d}.weight"] = distribute_tensor(full, mesh, [placement])
    return state


def _longest(seconds: float) -> float:
    value = torch.tensor([seconds], dtype=torch.float64)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return float(value.item())


@dataclass(frozen=True)
class _Settings:
    world: int
    port: int
    mb: int
    repeats: int
    root: str
    out: str


def _one_repeat(
    step: int,
    states: dict[str, dict[str, DTensor]],
    *,
    floor_buffers: list[torch.Tensor],
    ours: Any,
    dcp_group: Any,
    root: Path,
) -> dict[str, float]:
    """One repeat's timings on this rank (the floor copy, both saves, both restores)."""
    state = states["state"]
    timings = {}
    dist.barrier()
    began = time.perf_counter()
    torch._foreach_copy_(floor_buffers, [t.to_local() for t in state.values()])
    timings["floor: copy into preallocated memory"] = time.perf_counter() - began

    dist.barrier()
    began = time.perf_counter()
    handle = ours.save(step, state)
    timings["ours: stall"] = time.perf_counter() - began
    handle.result()
    timings["ours: commit"] = time.perf_counter() - began

    dcp_dir = root / "dcp" / str(step)
    dist.barrier()
    began = time.perf_counter()
    future = dcp_async_save(
        state, storage_writer=FileSystemWriter(dcp_dir), process_group=dcp_group
    )
    timings["DCP async_save: stall"] = time.perf_counter() - began
    future.result()
    timings["DCP async_save: commit"] = time.perf_counter() - began

    for name in ("restore", "resharded restore"):
        into = states[name]
        dist.barrier()
        began = time.perf_counter()
        ours.restore(step, target=into)
        timings[f"ours: {name}"] = time.perf_counter() - began
        dist.barrier()
        began = time.perf_counter()
        dcp_load(into, storage_reader=FileSystemReader(dcp_dir), process_group=dcp_group)
        timings[f"DCP: {name}"] = time.perf_counter() - began
    dist.barrier()
    if dist.get_rank() == 0:
        shutil.rmtree(dcp_dir)
    return timings


def _bench(rank: int, settings: _Settings) -> None:
    from alphatriangle.data import CheckpointManager, CheckpointManagerOptions, KeepLatest

    torch.set_num_threads(1)
    world = settings.world
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{settings.port}", rank=rank, world_size=world
    )
    states = {
        "state": _state(world, settings.mb, Shard(0), None),
        "restore": _state(world, settings.mb, Shard(0), 0.0),
        "resharded restore": _state(world, settings.mb, Shard(1), 0.0),
    }
    floor_buffers = [torch.empty_like(t.to_local()) for t in states["state"].values()]
    options = CheckpointManagerOptions(retention=KeepLatest(2))
    ours = CheckpointManager(Path(settings.root) / "ours", options, process_group=dist.group.WORLD)
    dcp_group = dist.new_group(backend="gloo")
    results: dict[str, list[float]] = {}
    for repeat in range(settings.repeats + 1):
        timings = _one_repeat(
            repeat + 1,
            states,
            floor_buffers=floor_buffers,
            ours=ours,
            dcp_group=dcp_group,
            root=Path(settings.root),
        )
        longest = {name: _longest(seconds) for name, seconds in timings.items()}
        if repeat > 0:  # the first is a warm-up: first allocations, first plans
            for name, seconds in longest.items():
                results.setdefault(name, []).append(seconds)
    for name in ("restore", "resharded restore"):
        for key, value in states[name].items():  # both restores were exact
            assert torch.equal(value.full_tensor(), states["state"][key].full_tensor()), name
    ours.close()
    if rank == 0:
        Path(settings.out).write_text(json.dumps(results))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--mb", type=int, default=100, help="MB per rank")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-distributed-", dir=args.dir))
    out = root / "results.json"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    try:
        mp.start_processes(
            _bench,
            args=(_Settings(args.ranks, port, args.mb, args.repeats, str(root), str(out)),),
            nprocs=args.ranks,
            start_method="spawn",
        )
        results = json.loads(out.read_text())
    finally:
        shutil.rmtree(root, ignore_errors=True)
    floor = "floor: copy into preallocated memory"
    rows = [
        (floor, results[floor], ""),
        ("ours: stall", results["ours: stall"], "DCP async_save: stall"),
        ("DCP async_save: stall", results["DCP async_save: stall"], floor),
        ("ours: commit", results["ours: commit"], "DCP async_save: commit"),
        ("DCP async_save: commit", results["DCP async_save: commit"], ""),
        ("ours: restore", results["ours: restore"], "DCP: restore"),
        ("DCP: restore", results["DCP: restore"], ""),
        ("ours: resharded restore", results["ours: resharded restore"], "DCP: resharded restore"),
        ("DCP: resharded restore", results["DCP: resharded restore"], ""),
    ]
    ratio = statistics.median(results["ours: stall"]) / statistics.median(results[floor])
    print(f"ours: stall / floor copy: {ratio:.2f}")
    report(
        f"distributed_{args.ranks}x{args.mb}MB",
        rows,
        {"ranks": args.ranks, "mb_per_rank": args.mb, "repeats": args.repeats},
    )


if __name__ == "__main__":
    main()
