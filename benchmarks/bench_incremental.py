"""Incremental saves of a full replay buffer: what each save writes, what the kept steps take
on disk, the save stall and the restore, against the same saves written whole.

    python benchmarks/bench_incremental.py [--experiences 100000] [--new 1000]
        [--updates 256] [--saves 6] [--keep 3] [--whole-first]

The state: a full ``ExperienceBuffer`` of the default shapes (its ``state_dict()``, as the
DataManager saves it). Between two saves it takes ``--new`` experiences and ``--updates``
priority updates. Two managers save the same states, ``KeepLatest(--keep)``: incremental
(``incremental=True``) and whole (the default). Measured per save: the bytes written (the
step's files no other step links, right after its commit), the stall (``save`` returning);
at the end: the disk the kept steps take (each file counted once, however many names it
has), and the restore of the newest step (15 interleaved restores each, page cache
warm). The manager created first stalls a few percent longer than the other whatever it
saves (its staging memory: two managers saving whole measure 1.04x to 1.08x apart), so the
incremental one is created first unless ``--whole-first``: run both ways.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import disk_bytes, incremental_kinds, report

from alphatriangle.config import TrainConfig
from alphatriangle.data import CheckpointManager, CheckpointManagerOptions, KeepLatest
from alphatriangle.data.checkpoint import step_dir_name, step_usage
from alphatriangle.rl.core import ExperienceBuffer
from alphatriangle.utils.types import ColumnarBatch

OPTIONS = {"experiences": 100_000, "new": 1000, "updates": 256, "saves": 6, "keep": 3}


def _batch(count: int, rng: np.random.Generator) -> ColumnarBatch:
    return ColumnarBatch(
        grid=rng.random((count, 1, 8, 15), dtype=np.float32),
        other_features=rng.random((count, 30), dtype=np.float32),
        policy_target=rng.random((count, 360), dtype=np.float32),
        value_target=rng.standard_normal(count),
    )


def _restores(managers: dict[str, CheckpointManager], step: int) -> dict[str, list[float]]:
    """Restores of ``step`` by each manager in turn (interleaved: a busy machine slows
    both alike), page cache warm."""
    samples: dict[str, list[float]] = {kind: [] for kind in managers}
    for round_ in range(16):
        for kind, manager in managers.items():
            began = time.perf_counter()
            manager.restore(step)
            if round_:  # the first round warms the cache
                samples[kind].append(time.perf_counter() - began)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name, default in OPTIONS.items():
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--whole-first", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    config = TrainConfig(BUFFER_CAPACITY=args.experiences, MIN_BUFFER_SIZE_TO_TRAIN=1)
    buffer = ExperienceBuffer(config, seed=0)
    for start in range(0, args.experiences, 10_000):
        buffer.add_batch(_batch(min(10_000, args.experiences - start), rng))
    root = Path(tempfile.mkdtemp(prefix="bench_incremental_"))
    kinds = incremental_kinds(whole_first=args.whole_first)
    managers = {
        kind: CheckpointManager(
            root / kind,
            CheckpointManagerOptions(incremental=flag, retention=KeepLatest(args.keep)),
        )
        for kind, flag in kinds.items()
    }
    written: dict[str, list[int]] = {kind: [] for kind in kinds}
    stalls: dict[str, list[float]] = {kind: [] for kind in kinds}
    try:
        for step in range(1, args.saves + 1):
            state = buffer.state_dict()
            order = list(managers.items())
            for kind, manager in order if step % 2 else order[::-1]:  # each goes first alike
                began = time.perf_counter()
                handle = manager.save(step, state)
                stalls[kind].append(time.perf_counter() - began)
                assert handle is not None
                handle.result()
                written[kind].append(step_usage(root / kind / step_dir_name(step))[0])
                manager.wait_until_finished()
            buffer.add_batch(_batch(args.new, rng))
            sample = buffer.sample(args.updates)
            assert sample is not None
            buffer.update_priorities(sample["indices"], rng.random(args.updates))
        disk = {
            kind: disk_bytes(f for f in (root / kind).rglob("*") if f.is_file()) for kind in kinds
        }
        restores = _restores(managers, args.saves)
    finally:
        for manager in managers.values():
            manager.close()
        shutil.rmtree(root, ignore_errors=True)
    full = written["incremental"][0]
    later = written["incremental"][1:]
    rows: list[tuple[str, Any, str]] = [
        ("stall whole", stalls["whole"][1:], ""),
        ("stall incremental", stalls["incremental"][1:], "stall whole"),
        ("restore whole", restores["whole"], ""),
        ("restore incremental", restores["incremental"], "restore whole"),
    ]
    figures = {
        "experiences": args.experiences,
        "created_first": next(iter(kinds)),
        "first_save_bytes": full,
        "later_save_bytes": later,
        "later_save_ratio_max": max(later) / full,
        "disk_bytes": disk,
        "disk_ratio_incremental": disk["incremental"] / full,
        "disk_ratio_whole": disk["whole"] / written["whole"][0],
    }
    report("bench_incremental", rows, figures)
    print(
        f"first save {full / 1e6:.1f} MB; later saves at most {max(later) / 1e6:.2f} MB "
        f"({figures['later_save_ratio_max']:.2%} of the first); {args.saves} saves with "
        f"{args.keep} kept: {disk['incremental'] / 1e6:.1f} MB on disk "
        f"({figures['disk_ratio_incremental']:.2f}x one full save; whole: "
        f"{figures['disk_ratio_whole']:.2f}x)"
    )


if __name__ == "__main__":
    main()
