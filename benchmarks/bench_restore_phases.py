"""Where a warm restore's time goes, and what starting its checksum pass at once gains.

    python benchmarks/bench_restore_phases.py [--size 10] [--rounds 200]

A state of ``bench_sweep.py`` (10 MB: 99 arrays) saved once, then restored ``--rounds``
times with the page cache warm, each restore after the sweep's floor (an xxh3 pass over the
mapped data file), alternating between the restore as it is (it waits until the thread of
its checksum pass has begun, ``HashThread.until_begun``) and the same restore without that
wait (the thread then begins when the restore next releases the GIL); which goes first
alternates too. For each: the median restore over the median floor, and when, after the
call, the pass was handed to its thread, began, ended, and the restore's own work (index,
arrays as views, the tree) was done. The phases are read by wrapping internals of
``_verified_files.py``: a diagnostic, not an API.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import report
from bench_sweep import hash_file, sweep_state

from alphatriangle.data import CheckpointManager, CheckpointManagerOptions, KeepLatest
from alphatriangle.data.checkpoint import _verified_files
from alphatriangle.data.checkpoint._hash_thread import HashThread

OPTIONS = {"size": 10.0, "rounds": 200}
PHASES = ("handed over", "begun", "ended", "own work done")


class Phases:
    """The moments of each restore's pass, read by wrapping the pipelined hasher."""

    def __init__(self) -> None:
        self.marks: dict[str, float] = {}
        hasher = _verified_files._PipelinedHash
        self._originals = hasher.update, hasher.stop
        marks, stop = self.marks, hasher.stop

        def timed_update(self: Any, view: memoryview) -> None:
            marks["handed over"] = time.perf_counter()
            update = self._hasher.update

            def hashing(piece: memoryview) -> None:
                marks.setdefault("begun", time.perf_counter())
                update(piece)
                marks["ended"] = time.perf_counter()

            self._thread.put(hashing, view)

        def timed_stop(self: Any) -> None:
            marks["own work done"] = time.perf_counter()
            stop(self)

        hasher.update, hasher.stop = timed_update, timed_stop  # type: ignore[method-assign]

    def close(self) -> None:
        hasher = _verified_files._PipelinedHash
        hasher.update, hasher.stop = self._originals  # type: ignore[method-assign]


def measure(size: float, rounds: int) -> dict[str, Any]:
    state = sweep_state(size)
    root = Path(tempfile.mkdtemp(prefix="bench_restore_phases_"))
    waits = HashThread.until_begun
    variants = {"with the wait": waits, "without it": lambda self: None}
    times: dict[str, list[float]] = {name: [] for name in variants}
    floors: dict[str, list[float]] = {name: [] for name in variants}
    phases: dict[str, dict[str, list[float]]] = {
        name: {phase: [] for phase in PHASES} for name in variants
    }
    phases_of = Phases()
    try:
        with CheckpointManager(root, CheckpointManagerOptions(retention=KeepLatest(1))) as manager:
            handle = manager.save(0, state)
            assert handle is not None
            data_file = handle.result() / "state.data"
            del state
            manager.restore(0)
            order = list(variants.items())
            for _ in range(rounds):
                order.reverse()
                for name, wait in order:
                    began = time.perf_counter()
                    hash_file(data_file)
                    floors[name].append(time.perf_counter() - began)
                    gc.collect()
                    HashThread.until_begun = wait  # type: ignore[method-assign]
                    phases_of.marks.clear()
                    began = time.perf_counter()
                    restored = manager.restore(0)
                    times[name].append(time.perf_counter() - began)
                    HashThread.until_begun = waits  # type: ignore[method-assign]
                    del restored
                    gc.collect()
                    for phase in PHASES:
                        phases[name][phase].append(phases_of.marks[phase] - began)
    finally:
        HashThread.until_begun = waits  # type: ignore[method-assign]
        phases_of.close()
        shutil.rmtree(root, ignore_errors=True)
    return {"times": times, "floors": floors, "phases": phases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=float, default=OPTIONS["size"])
    parser.add_argument("--rounds", type=int, default=OPTIONS["rounds"])
    args = parser.parse_args()
    measured = measure(args.size, args.rounds)
    rows: list[tuple[str, Any, str]] = []
    for name, times in measured["times"].items():
        floor = f"{args.size:.0f} MB: the pass alone (floor), beside {name}"
        rows.append((floor, measured["floors"][name], ""))
        rows.append((f"{args.size:.0f} MB: restore, {name}", times, floor))
        for phase, moments in measured["phases"][name].items():
            what = phase if phase == PHASES[-1] else f"pass {phase}"
            rows.append((f"  {name}: {what} (s after the call)", moments, ""))
    report("bench_restore_phases", rows, {"size_mb": args.size, "rounds": args.rounds})


if __name__ == "__main__":
    main()
