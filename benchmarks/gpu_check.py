"""The checks that need a GPU, in one short run: the CUDA tests, then the CUDA staging
benchmark (stall of ``save`` against a pinned device-to-host copy of the same bytes).

    python benchmarks/gpu_check.py [--gib 2] [--repeats 5]

Without a CUDA device it says so and exits 0 (the CUDA tests skip themselves in the suite).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import report

from alphatriangle.data import CheckpointManager, CheckpointManagerOptions, KeepLatest

OPTIONS = {"gib": 2.0, "leaves": 122, "repeats": 5}


def _pinned_copy(state: dict[str, torch.Tensor]) -> float:
    """The floor: the same tensors copied into preallocated pinned memory, one sync."""
    targets = {k: torch.empty(v.shape, dtype=v.dtype, pin_memory=True) for k, v in state.items()}
    for key, value in state.items():  # first touch
        targets[key].copy_(value, non_blocking=True)
    torch.cuda.synchronize()
    began = time.perf_counter()
    for key, value in state.items():
        targets[key].copy_(value, non_blocking=True)
    torch.cuda.synchronize()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name, default in OPTIONS.items():
        parser.add_argument(f"--{name}", type=type(default), default=default)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check here")
        return
    tests = Path(__file__).resolve().parents[1] / "tests" / "data" / "test_cuda.py"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "cuda", str(tests)], check=False
    )
    per_leaf = int(args.gib * (1 << 30) / 4 / args.leaves)
    state = {f"leaf{i:03d}": torch.randn(per_leaf, device="cuda") for i in range(args.leaves)}
    floors, stalls, commits = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        options = CheckpointManagerOptions(retention=KeepLatest(1))
        with CheckpointManager(Path(tmp) / "ckpt", options) as manager:
            manager.save(0, state)  # allocates the pinned staging buffer once
            manager.wait_until_finished()
            for step in range(1, args.repeats + 1):
                floors.append(_pinned_copy(state))
                began = time.perf_counter()
                handle = manager.save(step, state)
                stalls.append(time.perf_counter() - began)
                assert handle is not None
                handle.result()
                commits.append(time.perf_counter() - began)
            restored = manager.restore()
            assert all(torch.equal(restored[k], v) for k, v in state.items())
    median = sorted(floors)[len(floors) // 2], sorted(stalls)[len(stalls) // 2]
    report(
        "gpu_check",
        [
            ("pinned device-to-host copy (floor)", median[0], ""),
            ("alphatriangle save() stall", median[1], "pinned device-to-host copy (floor)"),
            ("alphatriangle save -> committed", sorted(commits)[len(commits) // 2], ""),
        ],
        {"gib": args.gib, "gb_per_s_floor": args.gib * (1 << 30) / 1e9 / median[0]},
    )
    sys.exit(result.returncode)


if __name__ == "__main__":
    main()
