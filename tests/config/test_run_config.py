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


REAL_RUN = (
    Path(__file__).parents[1]
    / "fixtures"
    / "alphatriangle-1.0.0-real"
    / "runs"
    / "train_20250421_101500"
)


def test_the_quick_preset_is_small_and_sits_under_the_file_and_flags(tmp_path: Path) -> None:
    from alphatriangle.training.presets import preset_names, preset_path

    assert "quick" in preset_names()
    quick = RunConfigs.build(preset=preset_path("quick"))
    assert quick.model.USE_TRANSFORMER is False and quick.model.NUM_RESIDUAL_BLOCKS == 0
    assert quick.train.MAX_TRAINING_STEPS == 1000 and quick.mcts.NUM_SIMULATIONS == 16
    assert RunConfigs().model.USE_TRANSFORMER is True  # the defaults stay 1.0.0's
    path = tmp_path / "run.yaml"
    path.write_text("MCTSConfig:\n  NUM_SIMULATIONS: 4\n")
    configs = RunConfigs.build(path, {"MAX_TRAINING_STEPS": 7}, preset=preset_path("quick"))
    assert configs.mcts.NUM_SIMULATIONS == 4 and configs.train.MAX_TRAINING_STEPS == 7
    assert configs.model == quick.model
    with pytest.raises(ValueError, match=r"no preset named 'huge': the presets are .*quick"):
        preset_path("huge")


def test_a_1_0_0_configs_json_builds_the_run_configs() -> None:
    configs = RunConfigs.build(REAL_RUN / "configs.json")
    assert configs.model.CONV_FILTERS == [8, 16] and configs.model.GRID_INPUT_CHANNELS == 1
    assert configs.train.OPTIMIZER_TYPE == "AdamW"
    assert configs.train.LR_SCHEDULER_TYPE == "CosineAnnealingLR"
    assert configs.persistence.RUN_NAME == "train_20250421_101500"
