"""Configuration errors name the field and the allowed range; alphatriangle 1.0.0's saved
configs construct ours unchanged; a field kept for 1.0.0 and not acted on warns when set."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from alphatriangle.config import (
    EnvConfig,
    IgnoredFieldWarning,
    MCTSConfig,
    ModelConfig,
    PersistenceConfig,
    TrainConfig,
)
from alphatriangle.data.legacy import load_legacy_checkpoint

REAL_RUN = (
    Path(__file__).resolve().parents[1]
    / "fixtures/alphatriangle-1.0.0-real/runs/train_20250421_101500"
)


def _saved_configs() -> dict[str, dict[str, Any]]:
    return json.loads((REAL_RUN / "configs.json").read_text())  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"BUFFER_CAPACITY": 0}, "BUFFER_CAPACITY"),
        ({"PER_ALPHA": 1.5}, "PER_ALPHA"),
        ({"PER_BETA_INITIAL": -0.1}, "PER_BETA_INITIAL"),
        ({"PER_BETA_INITIAL": 0.8, "PER_BETA_FINAL": 0.5}, "PER_BETA_FINAL"),
        ({"PER_EPSILON": 0.0}, "PER_EPSILON"),
        (
            {"BUFFER_CAPACITY": 10, "BATCH_SIZE": 11, "MIN_BUFFER_SIZE_TO_TRAIN": 5},
            r"BATCH_SIZE \(11\) is larger",
        ),
        (
            {"BUFFER_CAPACITY": 10, "BATCH_SIZE": 4, "MIN_BUFFER_SIZE_TO_TRAIN": 11},
            "MIN_BUFFER_SIZE",
        ),
        ({"LEARNING_RATE": 0}, "LEARNING_RATE"),
        ({"OPTIMIZER_TYPE": "RMSprop"}, "OPTIMIZER_TYPE"),
        ({"LR_SCHEDULER_TYPE": "OneCycleLR"}, "LR_SCHEDULER_TYPE"),
        ({"LR_SCHEDULER_T_MAX": 0}, "LR_SCHEDULER_T_MAX"),
        ({"NOT_A_FIELD": 1}, "NOT_A_FIELD"),
    ],
)
def test_train_config_rejects_bad_values(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TrainConfig(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"CONV_FILTERS": [8, 8], "CONV_KERNEL_SIZES": [3]}, "CONV_KERNEL_SIZES has 1"),
        ({"CONV_FILTERS": [8], "CONV_KERNEL_SIZES": [3], "CONV_STRIDES": [1, 1]}, "CONV_STRIDES"),
        ({"CONV_FILTERS": [8], "CONV_KERNEL_SIZES": [3], "CONV_PADDING": ["full"]}, "'same'"),
        (
            {
                "CONV_FILTERS": [8],
                "CONV_KERNEL_SIZES": [3],
                "CONV_STRIDES": [2],
                "CONV_PADDING": ["same"],
            },
            "needs stride 1",
        ),
        ({"FC_DIMS_SHARED": [0]}, "FC_DIMS_SHARED"),
        ({"VALUE_MIN": 1.0, "VALUE_MAX": 1.0}, "VALUE_MIN"),
        ({"NUM_VALUE_ATOMS": 1}, "NUM_VALUE_ATOMS"),
        ({"TRANSFORMER_DIM": 10, "TRANSFORMER_HEADS": 4}, "divisible by TRANSFORMER_HEADS"),
        ({"ACTIVATION_FUNCTION": "Tanh"}, "ACTIVATION_FUNCTION Tanh cannot drive"),
        ({"ACTIVATION_FUNCTION": "Softplus"}, "ACTIVATION_FUNCTION"),
        ({"NOT_A_FIELD": 1}, "NOT_A_FIELD"),
    ],
)
def test_model_config_rejects_bad_layers(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ModelConfig(**fields)  # type: ignore[arg-type]


def test_strides_and_padding_follow_the_convolutions_when_not_given() -> None:
    model = ModelConfig(CONV_FILTERS=[4, 8], CONV_KERNEL_SIZES=[3, (5, 3)])
    assert model.CONV_STRIDES == [1, 1] and model.CONV_PADDING == [1, (2, 1)]
    # Without the transformer any activation is fine, 1.0.0's Sigmoid included.
    assert (
        ModelConfig(USE_TRANSFORMER=False, ACTIVATION_FUNCTION="Sigmoid").uses_transformer is False
    )


def test_defaults_are_1_0_0_s() -> None:
    env = EnvConfig()
    assert (env.ROWS, env.COLS, env.NUM_SHAPE_SLOTS, env.ACTION_DIM) == (8, 15, 3, 360)
    assert env.PLAYABLE_RANGE_PER_ROW[0] == (3, 12) and env.PENALTY_GAME_OVER == -10.0
    model = ModelConfig()
    assert (model.GRID_INPUT_CHANNELS, model.OTHER_NN_INPUT_FEATURES_DIM) == (1, 30)
    assert (model.CONV_FILTERS, model.NUM_RESIDUAL_BLOCKS, model.RESIDUAL_BLOCK_FILTERS) == (
        [32, 64, 128],
        2,
        128,
    )
    assert (model.USE_TRANSFORMER, model.TRANSFORMER_DIM, model.TRANSFORMER_LAYERS) == (
        True,
        128,
        2,
    )
    assert (model.NUM_VALUE_ATOMS, model.VALUE_MIN, model.VALUE_MAX) == (51, -10.0, 10.0)
    train = TrainConfig()
    assert (train.OPTIMIZER_TYPE, train.LEARNING_RATE, train.LR_SCHEDULER_TYPE) == (
        "AdamW",
        2e-4,
        "CosineAnnealingLR",
    )
    assert (train.BATCH_SIZE, train.MAX_TRAINING_STEPS, train.lr_scheduler_t_max) == (
        128,
        100_000,
        100_000,
    )
    assert MCTSConfig().NUM_SIMULATIONS == 2048
    with pytest.raises(ValidationError):
        env.ROWS = 3  # frozen


def test_a_1_0_0_configs_json_constructs_every_config() -> None:
    saved = _saved_configs()
    with pytest.warns(IgnoredFieldWarning, match="COMPILE_MODEL"):
        train = TrainConfig(**saved["TrainConfig"])
    model = ModelConfig(**saved["ModelConfig"])
    persist = PersistenceConfig(**saved["PersistenceConfig"])
    assert (train.OPTIMIZER_TYPE, train.LR_SCHEDULER_T_MAX, train.BATCH_SIZE) == ("AdamW", 1000, 8)
    assert (model.CONV_FILTERS, model.TRANSFORMER_DIM, model.GRID_INPUT_CHANNELS) == (
        [8, 16],
        16,
        1,
    )
    assert (
        persist.ROOT_DATA_DIR == "/tmp/real100/small"
        and persist.TENSORBOARD_DIR_NAME == "tensorboard"
    )
    # Everything 1.0.0 saved is a field of ours, its alias, or a value it derived; every
    # field holds the value as saved, never rewritten.
    for config in (train, model, persist):
        section = saved[type(config).__name__]
        assert set(section) <= type(config).accepted_names()
        fields = set(section) & set(type(config).model_fields)
        assert config.model_dump(mode="json", include=fields) == {k: section[k] for k in fields}


def test_a_checkpoint_s_config_dicts_construct_model_and_env() -> None:
    data = load_legacy_checkpoint(REAL_RUN / "checkpoints/latest.pkl")
    model = ModelConfig(**data.model_config_dict)
    env = EnvConfig(**data.env_config_dict)  # with the ACTION_DIM 1.0.0 saved
    assert model == ModelConfig(**_saved_configs()["ModelConfig"])
    assert env == EnvConfig() and env.ACTION_DIM == data.env_config_dict["ACTION_DIM"] == 360
    with pytest.raises(ValidationError, match="ACTION_DIM 7 disagrees"):
        EnvConfig(**{**data.env_config_dict, "ACTION_DIM": 7})
    with pytest.raises(ValidationError, match="PLAYABLE_RANGE_PER_ROW has 7 rows"):
        EnvConfig(PLAYABLE_RANGE_PER_ROW=[(0, 15)] * 7)
    with pytest.raises(ValidationError, match=r"PLAYABLE_RANGE_PER_ROW\[0\] is \(3, 16\)"):
        EnvConfig(PLAYABLE_RANGE_PER_ROW=[(3, 16)] + [(0, 15)] * 7)
    # Another grid size without ranges: every cell playable, as the game plays it.
    assert EnvConfig(ROWS=2, COLS=3).PLAYABLE_RANGE_PER_ROW == [(0, 3), (0, 3)]


def test_mcts_config_reads_1_0_0_s_names() -> None:
    config = MCTSConfig.model_validate(
        {"num_simulations": 12, "puct_coefficient": 1.5, "temperature_anneal_steps": 7}
    )
    assert (config.NUM_SIMULATIONS, config.PUCT_COEFFICIENT, config.TEMPERATURE_MOVES) == (
        12,
        1.5,
        7,
    )
    with pytest.raises(ValidationError, match="name the same field"):
        MCTSConfig.model_validate({"num_simulations": 12, "NUM_SIMULATIONS": 13})
    with pytest.raises(ValidationError, match="TEMPERATURE_FINAL"):
        MCTSConfig.model_validate({"temperature_initial": 0.0, "temperature_final": 0.5})
    with pytest.raises(ValidationError, match="num_simulation"):
        MCTSConfig.model_validate({"num_simulation": 3})  # a misspelling is unknown, not ignored


@pytest.mark.parametrize(
    ("cls", "fields", "name"),
    [
        (TrainConfig, {"WORKER_DEVICE": "cuda"}, "WORKER_DEVICE"),
        (TrainConfig, {"N_STEP_RETURNS": 3}, "N_STEP_RETURNS"),
        (TrainConfig, {"GAMMA": 0.9}, "GAMMA"),
        (TrainConfig, {"COMPILE_MODEL": False}, "COMPILE_MODEL"),
        (MCTSConfig, {"MAX_SEARCH_DEPTH": 8}, "MAX_SEARCH_DEPTH"),
        (PersistenceConfig, {"TENSORBOARD_DIR_NAME": "tb"}, "TENSORBOARD_DIR_NAME"),
        (
            PersistenceConfig,
            {"MLFLOW_TRACKING_URI": "http://elsewhere:5000"},
            "MLFLOW_TRACKING_URI",
        ),
        (PersistenceConfig, {"MLFLOW_TRACKING_URI": "file:///data/other"}, "MLFLOW_TRACKING_URI"),
    ],
)
def test_an_ignored_field_warns_only_off_its_default(
    cls: type[Any], fields: dict[str, Any], name: str
) -> None:
    with pytest.warns(IgnoredFieldWarning, match=f"{name}=.* not acted on"):
        cls(**fields)
    with warnings.catch_warnings():
        warnings.simplefilter("error", IgnoredFieldWarning)
        cls()  # defaults: silent
        if cls is PersistenceConfig:  # 1.0.0's derived URI, saved from another directory
            cls(MLFLOW_TRACKING_URI="file:///elsewhere/.alphatriangle_data/mlruns")
