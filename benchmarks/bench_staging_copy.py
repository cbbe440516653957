"""Staging's copy of large numpy arrays through torch, against ``np.copyto``, in the save.

    python benchmarks/bench_staging_copy.py [--sizes 100,500] [--rounds 60] [--arrays-from BYTES]

The states of ``bench_sweep.py`` (a quarter of their bytes in two or three numpy arrays; at
10 MB they are 1 and 1.5 MB, below the size staging copies through torch, so both plans are
one), saved by one manager whose placement is reused. Its saves alternate between the plan
staging uses (``_staging_copy.CopyPlan``: the tensors and the large arrays in one batched
torch call, which copies each large one on several threads) and, as the baseline, the same
plan with the arrays copied by ``np.copyto`` (on one thread); which of the two goes first
alternates too. Each save follows the copy floor of the sweep (the state's bytes copied
into other memory, as a training step would leave the caches) and the commit of the save
before it: the caches and the staging buffer are as a save in a training loop finds them (a
copy timed alone, right after the buffer was written, measures something else). Medians of
the stalls, ``--rounds`` of each at 10 MB, fewer for larger states. ``--arrays-from``
sets the size from which staging copies an array through torch (``--sizes 10 --arrays-from
0`` measures the threads on the 1 and 1.5 MB arrays of the 10 MB state).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import report
from bench_sweep import CopyFloor, sweep_state

from alphatriangle.data import CheckpointManager, CheckpointManagerOptions, KeepLatest
from alphatriangle.data.checkpoint import _staging_copy
from alphatriangle.data.checkpoint._staging_copy import CopyPlan

OPTIONS = {"sizes": "100,500", "rounds": 60}


def arrays_by_numpy(plan: CopyPlan) -> CopyPlan:
    """The same targets and tensors, every numpy array through ``np.copyto``."""
    arrays = [entry for entry, _ in plan.arrays]
    return CopyPlan(plan.targets, plan.batched, [], sorted(plan.others + arrays))


def measure(state: dict[str, Any], rounds: int) -> tuple[list[float], list[float]]:
    """Stalls of saves with staging's plan and with the baseline, alternated."""
    root = Path(tempfile.mkdtemp(prefix="bench_staging_copy_"))
    options = CheckpointManagerOptions(retention=KeepLatest(1))
    stalls: dict[str, list[float]] = {"plan": [], "baseline": []}
    try:
        with CheckpointManager(root, options) as manager:
            manager.save(0, state)
            manager.wait_until_finished()
            (layout,) = [b.staging_layout for b in manager._pool.buffers()]  # type: ignore[union-attr]
            assert layout is not None
            plans = {"plan": layout.copies, "baseline": arrays_by_numpy(layout.copies)}
            floor = CopyFloor(state)
            step = 0
            order = list(plans.items())
            for _ in range(rounds):
                order.reverse()
                for name, plan in order:
                    layout.copies = plan
                    floor()
                    step += 1
                    began = time.perf_counter()
                    manager.save(step, state)
                    stalls[name].append(time.perf_counter() - began)
                    manager.wait_until_finished()
                    assert manager._pool.buffers()[0].staging_layout is layout  # type: ignore[union-attr]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return stalls["plan"], stalls["baseline"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default=OPTIONS["sizes"])
    parser.add_argument("--rounds", type=int, default=OPTIONS["rounds"])
    parser.add_argument("--arrays-from", type=int, default=_staging_copy._THREADED_ARRAYS_FROM)
    args = parser.parse_args()
    _staging_copy._THREADED_ARRAYS_FROM = args.arrays_from
    rows: list[tuple[str, float, str]] = []
    for size in (float(s) for s in args.sizes.split(",")):
        state = sweep_state(size)
        rounds = max(5, int(args.rounds * 10 / max(size, 10)))
        plan, baseline = measure(state, rounds)
        base = f"{size:.0f} MB: stall, arrays by np.copyto"
        rows.append((base, statistics.median(baseline), ""))
        rows.append((f"{size:.0f} MB: stall, staging's copy plan", statistics.median(plan), base))
    report(
        "bench_staging_copy",
        rows,
        {"sizes": args.sizes, "rounds_at_10_MB": args.rounds, "arrays_from": args.arrays_from},
    )


if __name__ == "__main__":
    main()
