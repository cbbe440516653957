"""Real processes, really killed: SIGKILL mid-save, mid-prune, and a real full disk."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import assert_tree_equal, python, state_for_step

from alphatriangle.data import CheckpointManager, CheckpointManagerOptions, KeepAll

pytestmark = pytest.mark.slow

MEGABYTES = 3.0


def _start(*args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [*python(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() not in ("ready", "locked"):
        proc.kill()
        raise AssertionError(f"worker did not start: {line!r} {proc.stderr.read()}")  # type: ignore[union-attr]
    return proc


def _kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _check_directory(directory: Path, seen: set[int]) -> list[int]:
    """Every visible step restores exactly; the sweep leaves no hidden directory; no step
    committed before is lost. Returns the steps."""
    with CheckpointManager(directory, CheckpointManagerOptions(retention=KeepAll())) as manager:
        assert not [p for p in directory.iterdir() if p.name.startswith(".step")]
        steps = manager.all_steps()
        for step in steps:
            assert_tree_equal(manager.restore(step), state_for_step(step, MEGABYTES))
    assert seen <= set(steps), f"committed steps lost: {sorted(seen - set(steps))}"
    return steps


def test_sigkill_at_random_instants_loses_nothing_committed(tmp_path: Path) -> None:
    directory = tmp_path / "ckpt"
    rng = random.Random(1234)
    seen: set[int] = set()
    leftovers_found = 0
    for _ in range(16):
        proc = _start("save-loop", str(directory), str(MEGABYTES), "0")
        time.sleep(rng.uniform(0.05, 0.8))
        _kill(proc)
        leftovers_found += any(p.name.startswith(".step") for p in directory.iterdir())
        seen = set(_check_directory(directory, seen))
    assert len(seen) >= 5, "the saver made too little progress to test anything"
    assert leftovers_found >= 1, "no kill ever landed mid-save: the test proved nothing"


def test_sigkill_while_pruning_leaves_no_half_step(tmp_path: Path) -> None:
    directory = tmp_path / "ckpt"
    rng = random.Random(99)
    for _ in range(6):
        proc = _start("save-loop", str(directory), str(MEGABYTES), "2")
        time.sleep(rng.uniform(0.1, 0.8))
        _kill(proc)
        steps = _check_directory(directory, set())
        assert steps, "a committed step vanished entirely"


def test_full_disk_surfaces_the_real_error_and_keeps_committed_steps(tmp_path: Path) -> None:
    directory = tmp_path / "ckpt"
    result = subprocess.run(
        [*python(), "disk-full", str(directory)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    too_big = {"type": "OSError", "errno": 27}  # EFBIG from write(2) under RLIMIT_FSIZE
    assert report["wait_until_finished"] == too_big
    assert report["next_save"] == too_big
    assert report["close"] == too_big
    assert report["leftovers"] == [], "a failed step left its temporary directory"
    assert report["steps_after"] == [0, 4]
    assert report["restored_intact"] is True
