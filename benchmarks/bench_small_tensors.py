"""Save stall of a state of many small tensors, against a plain loop of ``copy_``.

    python benchmarks/bench_small_tensors.py [--tensors 100000] [--floats 16] [--repeats 7]

Baseline, measured in the same run: a Python loop of ``copy_`` from each tensor into a
preallocated tensor of its own (what a hand-written snapshot costs). The stall is measured
from the second save on (the first places the layout and allocates the staging buffer).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import report, timed

from alphatriangle.data import CheckpointManager, CheckpointManagerOptions, KeepLatest

OPTIONS = {"tensors": 100_000, "floats": 16, "repeats": 7}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name, default in OPTIONS.items():
        parser.add_argument(f"--{name}", type=int, default=default)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    state = {
        f"t{i:06d}": torch.randn(args.floats, generator=generator) for i in range(args.tensors)
    }
    targets = {key: torch.empty_like(value) for key, value in state.items()}

    def copy_loop() -> None:
        for key, value in state.items():
            targets[key].copy_(value)

    copy_loop()
    root = Path(tempfile.mkdtemp(prefix="bench_small_"))
    copies, stalls, first = [], [], 0.0
    with CheckpointManager(root, CheckpointManagerOptions(retention=KeepLatest(1))) as manager:
        for step in range(args.repeats + 1):
            copies.append(timed(copy_loop))
            began = time.perf_counter()
            manager.save(step, state)
            elapsed = time.perf_counter() - began
            if step == 0:
                first = elapsed
            else:
                stalls.append(elapsed)
            manager.wait_until_finished()
    shutil.rmtree(root, ignore_errors=True)
    rows = [
        ("copy_ loop into preallocated tensors", float(np.median(copies)), ""),
        (
            "alphatriangle save() stall",
            float(np.median(stalls)),
            "copy_ loop into preallocated tensors",
        ),
        ("alphatriangle first save() (placement)", first, "copy_ loop into preallocated tensors"),
    ]
    report(
        "bench_small_tensors",
        rows,
        {
            "tensors": args.tensors,
            "floats_each": args.floats,
            "repeats": args.repeats,
            "stall_min_max": [min(stalls), max(stalls)],
            "copy_min_max": [min(copies), max(copies)],
        },
    )


if __name__ == "__main__":
    main()
