"""One writer per directory, any number of readers, with real processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers import python

from alphatriangle.data import (
    CheckpointError,
    CheckpointManager,
    CheckpointManagerOptions,
    KeepLatest,
    LockTimeoutError,
)
from alphatriangle.data.checkpoint.locking import reader_lease


def _start_holder(directory: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [*python(), "hold-writer", str(directory)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.slow
def test_second_writer_is_refused_naming_the_holder_until_it_dies(ckpt_dir: Path) -> None:
    holder = _start_holder(ckpt_dir)
    try:
        options = CheckpointManagerOptions(lock_timeout_s=0.5)
        began = time.monotonic()
        with pytest.raises(LockTimeoutError) as info:
            CheckpointManager(ckpt_dir, options)
        assert 0.4 < time.monotonic() - began < 5
        message = str(info.value)
        assert f"pid {holder.pid}" in message
        assert socket.gethostname() in message
        assert "since" in message
        assert isinstance(info.value, TimeoutError) and isinstance(info.value, CheckpointError)
        assert info.value.path == str(ckpt_dir)
        # Readers never need the writer lock.
        with CheckpointManager(ckpt_dir, CheckpointManagerOptions(read_only=True)) as reader:
            assert reader.all_steps() == []
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    began = time.monotonic()
    with CheckpointManager(ckpt_dir, CheckpointManagerOptions(lock_timeout_s=0.5)) as manager:
        manager.save(0, {"v": 1})
    assert time.monotonic() - began < 2, "a killed holder's lock was not freed at once"


def test_second_writer_in_the_same_process_is_refused_at_once(ckpt_dir: Path) -> None:
    with CheckpointManager(ckpt_dir):
        began = time.monotonic()
        with pytest.raises(LockTimeoutError, match="already open for writing in this process"):
            CheckpointManager(ckpt_dir, CheckpointManagerOptions(lock_timeout_s=30))
        assert time.monotonic() - began < 1, "waited for a lock this process holds"
        # Through another path to the same directory, too.
        with pytest.raises(LockTimeoutError, match=f"pid {os.getpid()}"):
            CheckpointManager(ckpt_dir / ".." / ckpt_dir.name)
    with CheckpointManager(ckpt_dir, CheckpointManagerOptions(lock_timeout_s=0.1)):
        pass  # released by close


def test_a_dropped_manager_frees_its_lock(ckpt_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    import gc
    import weakref

    manager = CheckpointManager(ckpt_dir)
    manager.save(0, {"w": torch.ones(3)}, metrics={"loss": 1.0})
    manager.wait_until_finished()
    manager.restore(0)
    alive = weakref.ref(manager)
    del manager  # the notebook case: the cell runs again without close()
    if alive() is not None:
        gc.collect()
    assert alive() is None, "something keeps a dropped manager alive"
    assert "dropped without close()" in caplog.text
    began = time.monotonic()
    with CheckpointManager(ckpt_dir, CheckpointManagerOptions(lock_timeout_s=30)) as again:
        assert again.all_steps() == [0]
        again.save(1, {"w": torch.zeros(3)})
    assert time.monotonic() - began < 1, "the reopen waited for the dropped manager's lock"


def test_retention_skips_a_step_a_reader_holds(ckpt_dir: Path) -> None:
    options = CheckpointManagerOptions(retention=KeepLatest(1))
    with CheckpointManager(ckpt_dir, options) as manager:
        manager.save(0, {"v": 0})
        manager.wait_until_finished()
        with reader_lease(ckpt_dir / "step_000000000"):
            manager.save(1, {"v": 1})
            manager.wait_until_finished()
            assert manager.all_steps() == [0, 1]  # held: not deleted
        manager.save(2, {"v": 2})
        manager.wait_until_finished()
        assert manager.all_steps() == [2]  # released: pruned at the next decision


@pytest.mark.slow
def test_readers_restore_exactly_while_the_writer_prunes(ckpt_dir: Path) -> None:
    seconds, megabytes = "6", "0.3"
    writer = subprocess.Popen(
        [*python(), "writer-prune", str(ckpt_dir), seconds, megabytes],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    readers = [
        subprocess.Popen(
            [*python(), "reader", str(ckpt_dir), seconds, megabytes],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    out, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err
    saved = json.loads(out.strip().splitlines()[-1])["saved"]
    total = 0
    for reader in readers:
        out, err = reader.communicate(timeout=120)
        assert reader.returncode == 0, err
        report = json.loads(out.strip().splitlines()[-1])
        assert report["errors"] == []
        total += report["restored"]
        assert report["distinct"] >= 2, "a reader never saw the writer make progress"
    assert saved >= 20, "the writer saved too few steps to race with readers"
    assert total >= 20


def test_a_checkpoint_directory_is_one_a_writer_opened_or_with_steps(tmp_path: Path) -> None:
    from alphatriangle.data.checkpoint import is_checkpoint_directory

    assert not is_checkpoint_directory(tmp_path / "missing")
    assert not is_checkpoint_directory(tmp_path)
    CheckpointManager(tmp_path / "opened").close()
    assert is_checkpoint_directory(tmp_path / "opened")
    with CheckpointManager(tmp_path / "copied") as manager:
        manager.save(0, {"w": torch.ones(1)})
    (tmp_path / "copied" / ".writer.lock").unlink()
    assert is_checkpoint_directory(tmp_path / "copied")
