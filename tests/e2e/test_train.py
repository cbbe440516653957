"""``alphatriangle train`` as users run it: a real process with real Ray workers, killed
with SIGKILL and resumed, stopped with SIGTERM and with Ctrl-C, resuming a run written by
alphatriangle 1.0.0; ``ckpt verify`` on what it leaves."""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from alphatriangle.config import ModelConfig, RunConfigs
from alphatriangle.data import CheckpointManager, CheckpointManagerOptions, DataManager
from alphatriangle.data.legacy import load_legacy_checkpoint
from alphatriangle.nn import NeuralNetwork
from alphatriangle.rl.core import ExperienceBuffer
from alphatriangle.stats import StatsCollector
from alphatriangle.training.learner import Learner
from alphatriangle.training.resume import configs_of_checkpoint

pytestmark = pytest.mark.slow

# Small and fast: the quick preset, shorter games, fewer simulations, small batches; one
# worker.
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
    tmp_path: Path, ray_tmp: str, run: str, steps: int, *extra: str, config_text: str = CONFIG
) -> subprocess.Popen[str]:
    config = tmp_path / "small.yaml"
    config.write_text(config_text)
    command = [
        *_entry_point(),
        "train",
        "--root",
        str(tmp_path / "data"),
        "--preset",
        "quick",
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


REAL_1_0_0 = Path(__file__).parents[1] / "fixtures" / "alphatriangle-1.0.0-real"
REAL_RUN = "train_20250421_101500"
# Training starts at once on the 40 experiences of the 1.0.0 buffer; MLflow off (its
# store's creation costs seconds; the other tests run with it).
RESUME_CONFIG = """\
TrainConfig:
  MIN_BUFFER_SIZE_TO_TRAIN: 8
  BATCH_SIZE: 8
  BUFFER_CAPACITY: 4000
MCTSConfig:
  NUM_SIMULATIONS: 4
  MAX_GAME_MOVES: 20
PersistenceConfig:
  MLFLOW_SYNC: false
"""


def _real_1_0_0_root(
    tmp_path: Path, stats: dict[str, Any] | None = None, **model_fields: Any
) -> None:
    """The real 1.0.0 run under ``tmp_path/data``; its checkpoints hold ``stats`` as their
    stats collector state, when given, and with ``model_fields`` their
    ``model_config_dict`` says those (the weights unchanged: they no longer fit)."""
    shutil.copytree(REAL_1_0_0 / "runs", tmp_path / "data" / "runs")
    for path in (tmp_path / "data").rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    if stats is None and not model_fields:
        return
    for path in (tmp_path / "data" / "runs" / REAL_RUN / "checkpoints").glob("*.pkl"):
        checkpoint = load_legacy_checkpoint(path)
        changed = {"model_config_dict": {**checkpoint.model_config_dict, **model_fields}}
        if stats is not None:
            changed["stats_collector_state"] = stats
        path.write_bytes(pickle.dumps(checkpoint.model_copy(update=changed)))


def test_a_1_0_0_run_resumes_and_its_new_steps_restore(tmp_path: Path, ray_tmp: str) -> None:
    # The run's checkpoints with the state 1.0.0's own stats collector gave (see the
    # fixture's README): its history must come through the resume.
    with (REAL_1_0_0 / "stats_collector_state.pkl").open("rb") as file:
        _real_1_0_0_root(tmp_path, stats=pickle.load(file))
    output = _finish(
        _train(tmp_path, ray_tmp, "upgraded", 9, "--save-every", "3", config_text=RESUME_CONFIG)
    )
    assert (
        f"resuming run upgraded from step 6 (from run {REAL_RUN}): buffer 40 experiences, "
        "12 games played, 600 simulations" in output
    ), output
    assert "with the checkpoint's own configs: ModelConfig: CONV_FILTERS" in output
    assert "run upgraded: step 6 -> 9;" in output, output
    checked = _verify(tmp_path / "data" / "runs" / "upgraded")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "step 9: ok" in checked.stdout

    # The new steps restore: 1.0.0's network, optimizer and schedule, the buffer, the stats.
    configs = RunConfigs.build(
        None,
        {"ROOT_DATA_DIR": str(tmp_path / "data"), "RUN_NAME": "upgraded", "MLFLOW_SYNC": False},
    )
    with DataManager(configs.persistence, configs.train) as data:
        loaded = data.load_initial_state()
    checkpoint = loaded.checkpoint_data
    assert checkpoint is not None and checkpoint.global_step == 9
    original = load_legacy_checkpoint(REAL_1_0_0 / "runs" / REAL_RUN / "checkpoints" / "latest.pkl")
    assert checkpoint.model_config_dict == ModelConfig.model_validate(
        original.model_config_dict
    ).model_dump(include=set(ModelConfig.model_fields))
    resumed, _ = configs_of_checkpoint(configs, checkpoint, None)
    network = NeuralNetwork(resumed.model, resumed.env, resumed.train, device="cpu")
    learner = Learner(network, resumed.train)
    buffer = ExperienceBuffer(resumed.train, resumed.env, resumed.model)
    stats = StatsCollector()
    DataManager.apply_loaded_state(
        loaded, network, learner.optimizer, buffer=buffer, scheduler=learner.scheduler
    )
    stats.set_state(checkpoint.stats_collector_state)
    assert type(learner.optimizer).__name__ == "AdamW"
    assert learner.scheduler.last_epoch == 9
    assert len(buffer) >= 40 and buffer.grid_shape == (1, 8, 15)
    history = stats.get_metric_data()
    assert [step for step, _ in history["train/loss"]] == [7, 8, 9]
    assert [step for step, _ in history["Loss/Total"]] == [3, 4, 5, 6, 7]  # 1.0.0's
    weights = network.get_weights()
    assert any(
        not torch.equal(weights[key], original.model_state_dict[key].cpu())
        for key in weights
        if weights[key].is_floating_point()
    )  # it trained


def test_a_1_0_0_checkpoint_that_does_not_fit_stops_naming_the_field(
    tmp_path: Path, ray_tmp: str
) -> None:
    _real_1_0_0_root(tmp_path, CONV_FILTERS=[8, 32])
    proc = _train(tmp_path, ray_tmp, "upgraded", 9, config_text=RESUME_CONFIG)
    output = _finish(proc)
    assert proc.returncode == 1, output
    assert "error: the checkpoint of run train_20250421_101500 at step 6" in output
    assert "see ModelConfig.CONV_FILTERS, CONV_KERNEL_SIZES" in output
    assert "Error(s) in loading state_dict" not in output
