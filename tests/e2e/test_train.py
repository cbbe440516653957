"""``alphatriangle train`` as users run it: a real process with real Ray workers, killed
with SIGKILL and resumed, stopped with SIGTERM and with Ctrl-C; ``ckpt verify`` on what it
leaves."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from alphatriangle.data import CheckpointManager, CheckpointManagerOptions

pytestmark = pytest.mark.slow

# Small and fast: short games, few simulations, small batches; one worker.
CONFIG = """\
TrainConfig:
  MIN_BUFFER_SIZE_TO_TRAIN: 64
  BATCH_SIZE: 16
  BUFFER_CAPACITY: 4000
MCTSConfig:
  NUM_SIMULATIONS: 4
  MAX_GAME_MOVES: 40
PersistenceConfig:
  KEEP_LATEST_CHECKPOINTS: 2
"""


def _entry_point() -> list[str]:
    script = Path(sys.executable).parent / "alphatriangle"
    return [str(script)] if script.exists() else [sys.executable, "-m", "alphatriangle.cli"]


@pytest.fixture
def ray_tmp() -> Iterator[str]:
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's sockets live under it
    yield temp
    shutil.rmtree(temp, ignore_errors=True)


def _train(
    tmp_path: Path, ray_tmp: str, run: str, steps: int, *extra: str
) -> subprocess.Popen[str]:
    config = tmp_path / "small.yaml"
    config.write_text(CONFIG)
    command = [
        *_entry_point(),
        "train",
        "--root",
        str(tmp_path / "data"),
        "--run-name",
        run,
        "--steps",
        str(steps),
        "--save-every",
        "5",
        "--workers",
        "1",
        "--config",
        str(config),
        *extra,
    ]
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )


def _checkpoints(tmp_path: Path, run: str) -> Path:
    return tmp_path / "data" / "runs" / run / "checkpoints"


def _wait_for_commit(proc: subprocess.Popen[str], directory: Path, timeout: float = 120) -> int:
    """The first committed step, polled while the trainer runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the trainer exited early: {proc.communicate()[0]}"
        if directory.is_dir():
            with CheckpointManager(directory, CheckpointManagerOptions(read_only=True)) as r:
                latest = r.latest_step()
            if latest is not None:
                return latest
        time.sleep(0.05)
    raise AssertionError("no checkpoint committed in time")


def _finish(proc: subprocess.Popen[str], timeout: float = 180) -> str:
    try:
        output, _ = proc.communicate(timeout=timeout)
    finally:
        # Whatever the trainer left behind (Ray's processes) goes with its group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return output


def _verify(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_entry_point(), "ckpt", "verify", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_sigkill_then_the_same_command_resumes_and_finishes(tmp_path: Path, ray_tmp: str) -> None:
    directory = _checkpoints(tmp_path, "killed")
    proc = _train(tmp_path, ray_tmp, "killed", 300)
    _wait_for_commit(proc, directory)
    time.sleep(0.3)  # mid-run: more saves are in flight
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    with CheckpointManager(directory, CheckpointManagerOptions(read_only=True)) as reader:
        last = reader.latest_step()
        assert last is not None and last < 300, "killed too late to test a resume"
        meta = reader.metadata(last)
    assert set(meta["items"]) == {"checkpoint", "buffer"}
    buffer_size = int(meta["metrics"]["buffer_size"])
    games = int(meta["metrics"]["episodes_played"])
    assert buffer_size >= 64 and games >= 1

    output = _finish(_train(tmp_path, ray_tmp, "killed", 300))
    assert f"resuming run killed from step {last}: buffer {buffer_size} experiences, " in output
    assert f"{games} games played" in output
    assert re.search(rf"run killed: step {last} -> 300;", output), output
    with CheckpointManager(directory, CheckpointManagerOptions(read_only=True)) as reader:
        assert reader.latest_step() == 300
        final = reader.metadata(300)
    assert set(final["items"]) == {"checkpoint", "buffer"}
    assert int(final["metrics"]["episodes_played"]) >= games
    assert int(final["metrics"]["buffer_size"]) >= buffer_size  # nothing of the buffer lost
    checked = _verify(tmp_path / "data" / "runs" / "killed")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "step 300: ok" in checked.stdout

    # A corrupted checkpoint: `ckpt verify` exits 1 naming the file, and training refuses
    # to start from scratch when no step can be read.
    for step_dir in directory.glob("step_*"):
        data = step_dir / "checkpoint.data"
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        data.write_bytes(bytes(raw))
    checked = _verify(directory)
    assert checked.returncode == 1 and "checkpoint.data" in checked.stderr
    refused = _finish(_train(tmp_path, ray_tmp, "killed", 400))
    assert "error:" in refused and "checkpoint.data" in refused, refused
    assert "starting fresh" not in refused


def test_sigterm_gives_a_final_checkpoint(tmp_path: Path, ray_tmp: str) -> None:
    directory = _checkpoints(tmp_path, "stopped")
    proc = _train(tmp_path, ray_tmp, "stopped", 1_000_000)
    _wait_for_commit(proc, directory)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    output = _finish(proc, timeout=120)
    assert proc.returncode == 0, output
    match = re.search(r"run stopped: step 0 -> (\d+) \(stopped by SIGTERM\)", output)
    assert match, output
    final = int(match.group(1))
    with CheckpointManager(directory, CheckpointManagerOptions(read_only=True)) as reader:
        assert reader.latest_step() == final
        assert set(reader.metadata(final)["items"]) == {"checkpoint", "buffer"}
    assert _verify(directory).returncode == 0


def test_ctrl_c_twice_aborts_at_once(tmp_path: Path, ray_tmp: str) -> None:
    directory = _checkpoints(tmp_path, "aborted")
    proc = _train(tmp_path, ray_tmp, "aborted", 1_000_000)
    _wait_for_commit(proc, directory)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    output = _finish(proc, timeout=60)
    assert proc.returncode in (0, 130), output  # 0: the final save won the race
    if proc.returncode == 130:
        assert "aborted: no final checkpoint" in output
    with CheckpointManager(directory, CheckpointManagerOptions(read_only=True)) as reader:
        latest = reader.latest_step()
        assert latest is not None
        reader.verify(latest)
