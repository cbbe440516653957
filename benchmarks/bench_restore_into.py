"""In-place restore into preallocated memory, against a checksum pass over the mapped file.

    python benchmarks/bench_restore_into.py [--mb 100] [--leaves 30] [--repeats 7]

The floor is what a verified restore cannot avoid: one xxh3 pass over the memory-mapped data
file (page cache warm); a plain copy of the same bytes into the preallocated tree is shown
beside it (a fill moves those bytes at least once). ``restore(target=...)`` reads every
array into a tree preallocated (and touched) beforehand, each array's checksum checked as
it lands; the default ``restore()`` (views of the mapping, verified) is shown for
comparison.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from _common import reference_state, report, state_bytes, timed
from bench_sweep import hash_file

from alphatriangle.data import CheckpointManager, CheckpointManagerOptions

OPTIONS = {"mb": 100.0, "leaves": 30, "repeats": 7}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=float, default=OPTIONS["mb"])
    parser.add_argument("--leaves", type=int, default=OPTIONS["leaves"])
    parser.add_argument("--repeats", type=int, default=OPTIONS["repeats"])
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_restore_into_"))
    state = reference_state(args.mb, args.leaves)
    with CheckpointManager(root) as manager:
        manager.save(0, state)
    data = root / "step_000000000" / "state.data"
    target = {k: torch.zeros_like(v) if isinstance(v, torch.Tensor) else np.zeros_like(v)
              for k, v in state.items()}  # fmt: skip
    floors, copies, restores, fills = [], [], [], []

    def copy() -> None:  # the bytes alone, memory to memory: what any fill must move
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                target[key].copy_(value)
            else:
                np.copyto(target[key], value)

    with CheckpointManager(root, CheckpointManagerOptions(read_only=True)) as reader:
        reader.restore(target=target)  # warm the page cache, touch the target
        for _ in range(args.repeats):
            floors.append(timed(lambda: hash_file(data)))
            copies.append(timed(copy))
            restores.append(timed(reader.restore))
            fills.append(timed(lambda: reader.restore(target=target)))
    for key, value in state.items():  # what was filled is what was saved
        assert np.array_equal(np.asarray(target[key]), np.asarray(value)), key
    shutil.rmtree(root, ignore_errors=True)
    floor = "xxh3 pass over the mapped file (floor)"
    report(
        "bench_restore_into",
        [
            (floor, floors, ""),
            ("copy of the same bytes into preallocated memory", copies, floor),
            ("restore() (mapped views, verified)", restores, floor),
            ("restore(target=...) into preallocated memory", fills, floor),
        ],
        {"state_bytes": state_bytes(state), "leaves": len(state), "repeats": args.repeats},
    )


if __name__ == "__main__":
    main()
