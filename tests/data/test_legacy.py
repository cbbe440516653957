"""Runs written by alphatriangle 1.0.0 keep loading, with the schemas of today."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from alphatriangle.data.checkpoint import CheckpointCorruptError
from alphatriangle.data.legacy import (
    legacy_checkpoint_files,
    load_legacy_buffer,
    load_legacy_checkpoint_dir,
)
from alphatriangle.data.schemas import BufferData, CheckpointData, LoadedTrainingState

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures/legacy-alphatriangle-1.0.0"
RUN = FIXTURE / "runs" / "train_20250410_093000"
EXPECTED = json.loads((FIXTURE / "train_20250410_093000.expected.json").read_text())


def test_the_1_0_0_run_loads_with_todays_schemas() -> None:
    data, path = load_legacy_checkpoint_dir(RUN / "checkpoints")
    assert path.name == "latest.pkl" and isinstance(data, CheckpointData)
    for field in ("run_name", "global_step", "episodes_played", "total_simulations_run"):
        assert getattr(data, field) == EXPECTED[field]
    param_sum = sum(float(t.double().sum()) for t in data.model_state_dict.values())
    assert param_sum == pytest.approx(EXPECTED["param_sum"], rel=1e-6)
    assert data.optimizer_state_dict["param_groups"][0]["lr"] == 0.001
    # Fields added since 1.0.0 take their defaults.
    assert data.scheduler_state_dict is None and data.rng_state is None and data.user_data == {}
    buffer = load_legacy_buffer(RUN / "buffers" / "buffer.pkl")
    assert isinstance(buffer, BufferData) and buffer.buffer_state is None
    assert len(buffer.buffer_list) == EXPECTED["n_experiences"]
    state, policy, value = buffer.buffer_list[0]
    assert value == EXPECTED["first_value"]
    assert float(state["grid"].sum()) == pytest.approx(EXPECTED["first_grid_sum"])
    assert state["grid"].shape == (2, 8, 15) and len(policy) == 360
    assert LoadedTrainingState(checkpoint_data=data, buffer_data=buffer).buffer_data is buffer


def _copy_run(tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(RUN, target)
    for path in target.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


def test_a_truncated_latest_falls_back_to_the_newest_readable_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = _copy_run(tmp_path)
    latest = run / "checkpoints" / "latest.pkl"
    latest.write_bytes(latest.read_bytes()[:1000])
    data, path = load_legacy_checkpoint_dir(run / "checkpoints")
    assert path.name == "checkpoint_step_2500.pkl" and data.global_step == 2500
    assert "latest.pkl" in caplog.text and "skipping unreadable" in caplog.text


def test_no_readable_file_raises_naming_each(tmp_path: Path) -> None:
    run = _copy_run(tmp_path)
    files = legacy_checkpoint_files(run / "checkpoints")
    assert [p.name for p in files] == ["latest.pkl", "checkpoint_step_2500.pkl", "best.pkl"]
    for path in files:
        path.write_bytes(b"garbage")
    with pytest.raises(CheckpointCorruptError) as info:
        load_legacy_checkpoint_dir(run / "checkpoints")
    for path in files:
        assert str(path) in str(info.value)


def test_todays_schemas_round_trip_through_pickle() -> None:
    data = CheckpointData(
        run_name="r",
        global_step=1,
        episodes_played=2,
        total_simulations_run=3,
        model_config_dict={},
        env_config_dict={},
        model_state_dict={"w": torch.ones(2)},
        optimizer_state_dict={},
        user_data={"note": "x"},
    )
    again = pickle.loads(pickle.dumps(data))
    assert again.user_data == {"note": "x"} and torch.equal(
        again.model_state_dict["w"], torch.ones(2)
    )


def test_the_fixture_lives_in_the_repository() -> None:
    repository = Path(__file__).resolve().parents[2]
    assert (repository / "pyproject.toml").is_file()
    assert FIXTURE.is_relative_to(repository) and RUN.is_dir()
