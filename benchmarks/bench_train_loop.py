"""The reference run's learner throughput with checkpointing on, against the same run with
checkpointing off, end to end (``alphatriangle train``'s loop, Ray workers included).

    python benchmarks/bench_train_loop.py [--steps 800] [--repeats 3]

Each repeat trains a fresh run to ``--steps`` twice, interleaved: without saving anything
(the run's metrics still go to MLflow), and with checkpointing on the quick preset
(checkpoint every 100 steps, buffer every 1000, a final save of both that is waited for,
each step uploaded to the local MLflow store). Learner throughput is steps over the time
from the first learner step to the end (the final commit included); the learner shares the
machine with the self-play workers, so the repeats vary: the median counts. Target:
at least 95% of the throughput without.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import tempfile
from pathlib import Path

from _common import report

from alphatriangle.config import RunConfigs
from alphatriangle.training import run_training
from alphatriangle.training.presets import preset_path

OPTIONS = {"steps": 800, "repeats": 3}


def _run(root: Path, steps: int, checkpointing: bool) -> tuple[float, list[float]]:
    configs = RunConfigs.build(
        None,
        {
            "ROOT_DATA_DIR": str(root),
            "RUN_NAME": "bench",
            "MAX_TRAINING_STEPS": steps,
        },
        preset=preset_path("quick"),
    )
    summary = run_training(
        configs, interactive=False, checkpointing=checkpointing, echo=lambda _: None
    )
    trained = summary.final_step - summary.start_step
    return summary.train_seconds / trained, summary.save_stalls_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for key, value in OPTIONS.items():
        parser.add_argument(f"--{key}", type=type(value), default=value)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    without: list[float] = []
    with_ckpt: list[float] = []
    stalls: list[float] = []
    for _ in range(args.repeats):
        for checkpointing, into in ((False, without), (True, with_ckpt)):
            root = Path(tempfile.mkdtemp(prefix="bench_train_"))
            try:
                per_step, run_stalls = _run(root, args.steps, checkpointing)
            finally:
                shutil.rmtree(root, ignore_errors=True)
            into.append(per_step)
            stalls += run_stalls
    kept = statistics.median(without) / statistics.median(with_ckpt)
    report(
        "bench_train_loop",
        [
            ("seconds per learner step, no checkpointing", without, ""),
            (
                "seconds per learner step, checkpointing",
                with_ckpt,
                "seconds per learner step, no checkpointing",
            ),
        ],
        {
            "options": vars(args),
            "throughput_kept": kept,
            "save_stall_ms": {"median": statistics.median(stalls), "max": max(stalls)}
            if stalls
            else None,
        },
    )
    print(f"throughput kept with checkpointing: {kept:.1%} (target >= 95%)")
    if stalls:
        print(f"save stall: median {statistics.median(stalls):.1f} ms, max {max(stalls):.1f} ms")


if __name__ == "__main__":
    main()
