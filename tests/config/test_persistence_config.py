"""Run names and load paths are checked before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from alphatriangle.config import PersistenceConfig, TrainConfig


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\\b", "bad\x00name", "tab\tname"])
def test_unsafe_run_names_are_refused(name: str) -> None:
    with pytest.raises(ValidationError, match="RUN_NAME"):
        TrainConfig(RUN_NAME=name)
    with pytest.raises(ValidationError, match="RUN_NAME"):
        PersistenceConfig(RUN_NAME=name)


def test_a_load_path_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="does not exist"):
        TrainConfig(LOAD_CHECKPOINT_PATH=str(tmp_path / "missing.pkl"))
    assert str(tmp_path) == TrainConfig(LOAD_CHECKPOINT_PATH=str(tmp_path)).LOAD_CHECKPOINT_PATH


def test_defaults_are_1_0_0_s_and_paths_follow_them(tmp_path: Path) -> None:
    config = PersistenceConfig(ROOT_DATA_DIR=str(tmp_path))
    assert str(tmp_path) == config.ROOT_DATA_DIR
    assert PersistenceConfig().ROOT_DATA_DIR == ".alphatriangle_data"
    assert config.get_run_base_dir("r1") == tmp_path / "runs" / "r1"
    assert f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}" == config.MLFLOW_TRACKING_URI
    assert TrainConfig().RUN_NAME.startswith("train_") and TrainConfig().AUTO_RESUME_LATEST
