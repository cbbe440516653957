from __future__ import annotations

import json
from pathlib import Path

import pytest

from alphatriangle.config import ConfigFileError, RunConfigs


def test_defaults_file_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(
        "TrainConfig:\n  BATCH_SIZE: 32\n  LEARNING_RATE: 0.01\n"
        "mcts:\n  NUM_SIMULATIONS: 8\n"
        "RUN_NAME: from_file\n"
    )
    configs = RunConfigs.build(path, {"LEARNING_RATE": 0.002, "RANDOM_SEED": None})
    assert configs.train.BATCH_SIZE == 32
    assert configs.train.LEARNING_RATE == 0.002  # the flag wins over the file
    assert configs.train.RANDOM_SEED == 42  # None: not given
    assert configs.mcts.NUM_SIMULATIONS == 8
    # A flat name sets the field wherever it exists.
    assert configs.train.RUN_NAME == configs.persistence.RUN_NAME == "from_file"
    assert configs.env.ACTION_DIM == 360


def test_json_and_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"PersistenceConfig": {"KEEP_LATEST_CHECKPOINTS": 5}}))
    configs = RunConfigs.build(path)
    assert configs.persistence.KEEP_LATEST_CHECKPOINTS == 5
    again = tmp_path / "again.json"
    again.write_text(json.dumps(configs.as_dict()))
    assert RunConfigs.build(again) == configs


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("TrainConfig:\n  BATCH_SIZ: 3\n", "TrainConfig has no field BATCH_SIZ"),
        ("NOT_A_FIELD: 1\n", "no config has a field named 'NOT_A_FIELD'"),
        ("TrainConfig: 3\n", "section TrainConfig must be a mapping"),
        ("- 1\n- 2\n", "must hold a mapping"),
        ("TrainConfig:\n  BATCH_SIZE: 0\n", "BATCH_SIZE"),
        ("a: [\n", "not valid YAML or JSON"),
    ],
)
def test_bad_files_name_the_file_and_the_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigFileError, match=message) as info:
        RunConfigs.build(path)
    assert str(path) in str(info.value)


def test_a_missing_file_and_a_bad_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="cannot read the config file"):
        RunConfigs.build(tmp_path / "absent.yaml")
    with pytest.raises(ConfigFileError, match=r"(?s)the command line.*NUM_SELF_PLAY_WORKERS"):
        RunConfigs.build(None, {"NUM_SELF_PLAY_WORKERS": 0})
