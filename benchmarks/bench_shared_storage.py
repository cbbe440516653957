"""A state whose tensors all share one storage (a flat parameter buffer and its views),
against saving the storage alone.

    python benchmarks/bench_shared_storage.py [--mb 200] [--views 200] [--repeats 7]

Both are saved by the same kind of manager in the same run, interleaved; the stall is timed
from the second save of each (the first places the layout). Bytes written: the step's data
file.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import report

from alphatriangle.data import CheckpointManager, CheckpointManagerOptions, KeepLatest

OPTIONS = {"mb": 200.0, "views": 200, "repeats": 7}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=float, default=OPTIONS["mb"])
    parser.add_argument("--views", type=int, default=OPTIONS["views"])
    parser.add_argument("--repeats", type=int, default=OPTIONS["repeats"])
    args = parser.parse_args()
    count = int(args.mb * 1e6 / 4) // args.views * args.views
    flat = torch.randn(count)
    views = {f"p{i:04d}": chunk for i, chunk in enumerate(flat.view(args.views, -1).unbind(0))}
    states = {"storage alone": {"flat": flat}, "its views": views}
    root = Path(tempfile.mkdtemp(prefix="bench_shared_"))
    managers = {
        name: CheckpointManager(
            root / name.replace(" ", "_"), CheckpointManagerOptions(retention=KeepLatest(1))
        )
        for name in states
    }
    stalls: dict[str, list[float]] = {name: [] for name in states}
    written: dict[str, int] = {}
    for step in range(args.repeats + 1):
        for name, manager in managers.items():
            began = time.perf_counter()
            handle = manager.save(step, states[name])
            elapsed = time.perf_counter() - began
            assert handle is not None
            written[name] = (handle.result() / "state.data").stat().st_size
            manager.wait_until_finished()
            if step:
                stalls[name].append(elapsed)
    for manager in managers.values():
        manager.close()
    shutil.rmtree(root, ignore_errors=True)
    rows = [
        ("save() stall, the storage alone", float(np.median(stalls["storage alone"])), ""),
        (
            f"save() stall, {args.views} views of it",
            float(np.median(stalls["its views"])),
            "save() stall, the storage alone",
        ),
    ]
    report(
        "bench_shared_storage",
        rows,
        {
            "bytes_written": written,
            "bytes_ratio": written["its views"] / written["storage alone"],
            "repeats": args.repeats,
            "views": args.views,
            "state_bytes": flat.numel() * 4,
        },
    )
    print(
        f"bytes written: views {written['its views']}, storage {written['storage alone']} "
        f"({written['its views'] / written['storage alone']:.3f}x)"
    )


if __name__ == "__main__":
    main()
