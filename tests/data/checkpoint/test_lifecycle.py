"""Saves and closes under interruption and races: no step is lost without an error, no
handle is left pending, nothing hangs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from helpers import REPO, assert_tree_equal, state_for_step

from alphatriangle.data import (
    CheckpointError,
    CheckpointManager,
    CheckpointManagerOptions,
    KeepLatest,
    RetentionPolicy,
    StepInfo,
)


class _InterruptingClock:
    """A clock that raises KeyboardInterrupt once when armed: the manager reads it after
    staging and before queueing the write, exactly where a Ctrl-C can land."""

    def __init__(self) -> None:
        self.armed = False

    def __call__(self) -> float:
        if self.armed:
            self.armed = False
            raise KeyboardInterrupt
        return time.time()


def test_interrupt_between_staging_and_queueing_releases_everything(ckpt_dir: Path) -> None:
    clock = _InterruptingClock()
    manager = CheckpointManager(ckpt_dir, clock=clock)
    clock.armed = True
    with pytest.raises(KeyboardInterrupt):
        manager.save(1, state_for_step(1))
    # The step is forgotten and its buffer free: the same step saves, and so does the next,
    # without blocking; close returns.
    done = threading.Event()

    def save_again() -> None:
        manager.save(1, state_for_step(1))
        manager.save(2, state_for_step(2))
        manager.close()
        done.set()

    threading.Thread(target=save_again, daemon=True).start()
    assert done.wait(60), "save or close blocked after an interrupted save"
    with CheckpointManager(ckpt_dir) as reopened:
        assert reopened.all_steps() == [1, 2]
        assert_tree_equal(reopened.restore(1), state_for_step(1))


class _SlowMetric(float):
    """A metric whose conversion waits for an event: a save held between its first checks
    and its submission."""

    entered = threading.Event()
    release = threading.Event()

    def __float__(self) -> float:
        type(self).entered.set()
        type(self).release.wait(30)
        return 1.0


def test_save_racing_close_completes_or_raises(ckpt_dir: Path) -> None:
    manager = CheckpointManager(ckpt_dir)
    outcome: list[object] = []

    def slow_save() -> None:
        try:
            outcome.append(manager.save(3, {"w": torch.ones(10)}, metrics={"m": _SlowMetric()}))
        except CheckpointError as exc:
            outcome.append(exc)

    saver = threading.Thread(target=slow_save)
    saver.start()
    assert _SlowMetric.entered.wait(30)
    closer = threading.Thread(target=manager.close)
    closer.start()
    deadline = time.monotonic() + 10
    while not manager._closed and time.monotonic() < deadline:
        time.sleep(0.005)
    _SlowMetric.release.set()
    saver.join(30)
    closer.join(30)
    assert not saver.is_alive() and not closer.is_alive()
    (result,) = outcome
    if isinstance(result, CheckpointError):
        assert "closed" in str(result)
    else:  # it made it in before close: then it is committed
        assert result is not None
        assert result.committed.done(), "close returned while the save's handle was pending"
        assert result.result(0) == ckpt_dir / "step_000000003"


@dataclass(frozen=True)
class _BlockingFailingPolicy(RetentionPolicy):
    """Retention that blocks until released, then fails: a background failure that stays in
    flight as long as the test wants."""

    release: threading.Event = field(default_factory=threading.Event, compare=False)

    def keep(self, steps: Sequence[StepInfo], now: float) -> set[int]:
        self.release.wait(30)
        raise RuntimeError("retention policy broke")


def test_concurrent_closes_both_wait_and_the_failure_reaches_a_caller(ckpt_dir: Path) -> None:
    policy = _BlockingFailingPolicy()
    manager = CheckpointManager(ckpt_dir, CheckpointManagerOptions(retention=policy))
    manager.save(0, {"w": torch.zeros(4)})
    manager.save(1, {"w": torch.ones(4)})  # its retention blocks, then fails
    raised: list[BaseException | None] = []

    def close() -> None:
        try:
            manager.close()
            raised.append(None)
        except RuntimeError as exc:
            raised.append(exc)

    first, second = threading.Thread(target=close), threading.Thread(target=close)
    first.start()
    second.start()
    time.sleep(0.3)
    assert first.is_alive() and second.is_alive(), "a close returned with a save in flight"
    policy.release.set()
    first.join(30)
    second.join(30)
    assert len(raised) == 2
    assert any(isinstance(e, RuntimeError) for e in raised), "the failure reached no caller"


def test_script_that_never_closes_still_commits_its_last_save(tmp_path: Path) -> None:
    directory = tmp_path / "ckpt"
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(REPO / "tests")!r})
        from helpers import state_for_step
        from alphatriangle.data import CheckpointManager
        manager = CheckpointManager({str(directory)!r})
        manager.save(7, state_for_step(7, 32.0))
        print("saved", flush=True)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "finishing 1 checkpoint save(s) in flight (steps [7])" in result.stderr
    with CheckpointManager(directory) as manager:
        assert manager.all_steps() == [7]
        assert_tree_equal(manager.restore(7), state_for_step(7, 32.0))


def test_exit_message_counts_only_saves_not_yet_committed(tmp_path: Path) -> None:
    directory = tmp_path / "ckpt"
    script = textwrap.dedent(
        f"""
        import time
        from alphatriangle.data import CheckpointManager, CheckpointManagerOptions, KeepAll

        class SlowRetention(KeepAll):
            def keep(self, steps, now):
                time.sleep(1.0)  # post-commit work still running at exit
                return super().keep(steps, now)

        options = CheckpointManagerOptions(retention=SlowRetention())
        manager = CheckpointManager({str(directory)!r}, options)
        manager.save(0, {{"w": 0}})
        manager.save(1, {{"w": 1}}).result(60)
        print("committed", flush=True)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "committed" in result.stdout
    assert "in flight" not in result.stderr, result.stderr


def test_creating_the_directory_fsyncs_each_new_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Observes the fsync syscalls by wrapping os.fsync (the real call still runs).
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(str(Path(f"/proc/self/fd/{fd}").readlink()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    directory = tmp_path / "a" / "b" / "ckpt"
    with CheckpointManager(directory, CheckpointManagerOptions(retention=KeepLatest(1))) as m:
        m.save(0, {"w": torch.zeros(3)}).result(60)  # type: ignore[union-attr]
    for created in (tmp_path / "a", tmp_path / "a" / "b", directory):
        assert str(created) in synced, f"{created} was created but never fsynced"
        assert str(created.parent) in synced, f"the entry of {created} was never fsynced"
    first_step_sync = next(i for i, path in enumerate(synced) if ".step_000000000.tmp" in path)
    assert synced.index(str(tmp_path)) < first_step_sync, "a step was written before its parents"
