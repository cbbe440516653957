"""Opening a directory of 10,000 committed steps and deciding retention.

    python benchmarks/bench_retention.py [--steps 10000]

The steps are real committed steps (manifest, index, data), cloned from one saved step with
their manifests rewritten. Measured: opening the manager (scan and sweep), then one
retention decision that reads every manifest (``KeepLatest(3) | KeepBest(2, "loss") |
KeepEvery(1000)``); the floor is listing the directory and reading every manifest's bytes.
Also the decision alone on 10x more synthetic steps, to show it grows as n log n.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

from _common import report, timed

from alphatriangle.data import (
    CheckpointManager,
    CheckpointManagerOptions,
    KeepAll,
    KeepBest,
    KeepEvery,
    KeepLatest,
    StepInfo,
)
from alphatriangle.data.checkpoint.layout import MANIFEST_NAME, step_dir_name
from alphatriangle.data.checkpoint.manifest import canonical, seal

OPTIONS = {"steps": 10_000}
POLICY = KeepLatest(3) | KeepBest(2, metric="loss", mode="min") | KeepEvery(steps=1000)


def _populate(directory: Path, steps: int) -> None:
    with CheckpointManager(directory, CheckpointManagerOptions(retention=KeepAll())) as manager:
        manager.save(0, {"w": [1.0] * 10}, metrics={"loss": 1.0})
    template = directory / step_dir_name(0)
    manifest = json.loads((template / MANIFEST_NAME).read_text())
    manifest.pop("checksum")
    rng = random.Random(0)
    for step in range(1, steps):
        target = directory / step_dir_name(step)
        target.mkdir()
        for item in template.iterdir():
            if item.name != MANIFEST_NAME:
                os.link(item, target / item.name)
        manifest.update(step=step, wall_time=float(step), metrics={"loss": rng.random()})
        (target / MANIFEST_NAME).write_bytes(seal(canonical(manifest)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=OPTIONS["steps"])
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_retention_"))
    directory = root / "checkpoints"
    began = time.perf_counter()
    _populate(directory, args.steps)
    print(f"{args.steps} committed steps written in {time.perf_counter() - began:.1f} s")

    def floor() -> None:
        for path in directory.iterdir():
            if path.name.startswith("step_"):
                (path / MANIFEST_NAME).read_bytes()

    floor_s = timed(floor)
    options = CheckpointManagerOptions(retention=POLICY)
    began = time.perf_counter()
    manager = CheckpointManager(directory, options)
    open_s = time.perf_counter() - began
    began = time.perf_counter()
    keep = manager.plan_retention()  # reads and verifies every manifest, then decides
    decide_s = time.perf_counter() - began
    manager.close()
    assert keep
    print(f"keeps {len(keep)} of {args.steps} steps")
    shutil.rmtree(root, ignore_errors=True)

    def synthetic(n: int) -> float:
        rng = random.Random(1)
        infos = [StepInfo(s, float(s), {"loss": rng.random()}) for s in range(n)]
        return timed(lambda: POLICY.keep(infos, now=float(n)))

    small, large = synthetic(args.steps), synthetic(10 * args.steps)
    rows = [
        ("list directory + read every manifest (floor)", floor_s, ""),
        ("open the manager (scan, sweep)", open_s, "list directory + read every manifest (floor)"),
        (
            "decide retention (reads every manifest)",
            decide_s,
            "list directory + read every manifest (floor)",
        ),
        ("open + decide", open_s + decide_s, "list directory + read every manifest (floor)"),
        (f"decision alone, {args.steps} steps", small, ""),
        (f"decision alone, {10 * args.steps} steps", large, f"decision alone, {args.steps} steps"),
    ]
    n_log_n = (10 * math.log(10 * args.steps)) / math.log(args.steps)
    report("bench_retention", rows, {"steps": args.steps, "n_log_n_ratio_for_10x": n_log_n})
    print(f"10x steps costs {large / small:.1f}x (n log n would be {n_log_n:.1f}x)")


if __name__ == "__main__":
    main()
