"""Child processes for the crash, disk-full and multi-process tests.

Usage: python workers.py MODE DIRECTORY [ARGS...]; each mode prints progress lines that the
parent waits for.
"""

from __future__ import annotations

import json
import resource
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from helpers import assert_tree_equal, state_for_step

from alphatriangle.data import (
    CheckpointManager,
    CheckpointManagerOptions,
    KeepAll,
    KeepLatest,
)


def save_loop(directory: str, megabytes: str, keep: str) -> None:
    """Save steps 0, 1, 2... until killed; keep=0 keeps all, else KeepLatest(keep)."""
    n = int(keep)
    retention = KeepAll() if n == 0 else KeepLatest(n)
    manager = CheckpointManager(directory, CheckpointManagerOptions(retention=retention))
    start = (manager.latest_step() or -1) + 1
    print("ready", flush=True)
    step = start
    while True:
        manager.save(step, state_for_step(step, float(megabytes)), metrics={"step": step})
        step += 1


def disk_full(directory: str) -> None:
    """Commit a small step, then hit RLIMIT_FSIZE (a real EFBIG from write) on large ones;
    report where each failure surfaced."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limit = 2 << 20
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    report: dict[str, object] = {}

    def attempt(where: str, action: Callable[[], object]) -> None:
        try:
            action()
            report[where] = None
        except OSError as exc:
            report[where] = {"type": type(exc).__name__, "errno": exc.errno}

    manager = CheckpointManager(directory, CheckpointManagerOptions(retention=KeepAll()))
    manager.save(0, state_for_step(0, 0.5))
    manager.wait_until_finished()
    manager.save(1, state_for_step(1, 8.0))
    attempt("wait_until_finished", manager.wait_until_finished)
    manager.save(2, state_for_step(2, 8.0))
    attempt("next_save", lambda: manager.save(3, state_for_step(3, 0.5)))
    manager.save(4, state_for_step(4, 0.5))
    manager.save(5, state_for_step(5, 8.0))
    attempt("close", manager.close)
    hidden = [p.name for p in Path(directory).iterdir() if p.name.startswith(".step")]
    report["leftovers"] = sorted(hidden)
    with CheckpointManager(directory) as reopened:
        report["steps_after"] = reopened.all_steps()
        for step in reopened.all_steps():
            assert_tree_equal(reopened.restore(step), state_for_step(step, 0.5))
        report["restored_intact"] = True
    print(json.dumps(report), flush=True)


def waiters_disk_full(directory: str) -> None:
    """Three threads wait while a save fails on a real EFBIG; report what each saw, and
    what the training loop's next save saw."""
    import threading

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limit = 2 << 20
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    manager = CheckpointManager(directory, CheckpointManagerOptions(retention=KeepAll()))
    manager.save(0, state_for_step(0, 8.0))  # too big: its write fails in the background
    seen: dict[str, object] = {}

    def wait(name: str) -> None:
        try:
            manager.wait_until_finished()
            seen[name] = None
        except OSError as exc:
            seen[name] = exc.errno

    threads = [threading.Thread(target=wait, args=(f"waiter{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        manager.save(1, state_for_step(1, 0.5))
        seen["next_save"] = None
    except OSError as exc:
        seen["next_save"] = exc.errno
    manager.close()
    print(json.dumps(seen), flush=True)


def upload_held(directory: str, tracking_uri: str) -> None:
    """Commit one step whose upload cannot finish (the proxy holds its manifest), report,
    and wait to be killed."""
    from alphatriangle.data import MlflowSyncOptions

    sync = MlflowSyncOptions(
        tracking_uri=tracking_uri, experiment_name="sync-kill", backoff_initial_s=0.05
    )
    options = CheckpointManagerOptions(retention=KeepAll(), mlflow=sync)
    manager = CheckpointManager(directory, options)
    print("ready", flush=True)
    handle = manager.save(0, state_for_step(0, 4.0))
    assert handle is not None
    handle.result()
    print("committed", flush=True)
    time.sleep(3600)


def hold_writer(directory: str) -> None:
    manager = CheckpointManager(directory)
    print("locked", flush=True)
    time.sleep(3600)
    manager.close()


def writer_prune(directory: str, seconds: str, megabytes: str) -> None:
    """Save and prune (KeepLatest(2)) as fast as possible for ``seconds``."""
    options = CheckpointManagerOptions(retention=KeepLatest(2))
    with CheckpointManager(directory, options) as manager:
        deadline = time.monotonic() + float(seconds)
        step = 0
        while time.monotonic() < deadline:
            manager.save(step, state_for_step(step, float(megabytes)))
            step += 1
    print(json.dumps({"saved": step}), flush=True)


def reader(directory: str, seconds: str, megabytes: str) -> None:
    """Restore the newest step in a loop; count errors and mismatches."""
    options = CheckpointManagerOptions(read_only=True)
    deadline = time.monotonic() + float(seconds)
    restored, errors, steps = 0, [], set()
    with CheckpointManager(directory, options) as manager:
        while time.monotonic() < deadline:
            if manager.latest_step() is None:
                time.sleep(0.01)
                continue
            try:
                state = manager.restore()
                assert_tree_equal(state, state_for_step(state["step"], float(megabytes)))
                restored += 1
                steps.add(state["step"])
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
    print(json.dumps({"restored": restored, "errors": errors, "distinct": len(steps)}), flush=True)


if __name__ == "__main__":
    modes = {
        "save-loop": save_loop,
        "disk-full": disk_full,
        "hold-writer": hold_writer,
        "upload-held": upload_held,
        "waiters-disk-full": waiters_disk_full,
        "writer-prune": writer_prune,
        "reader": reader,
    }
    modes[sys.argv[1]](*sys.argv[2:])
