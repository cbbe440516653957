"""Configuration errors name the field and the allowed range."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from alphatriangle.config import EnvConfig, ModelConfig, TrainConfig


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"BUFFER_CAPACITY": 0}, "BUFFER_CAPACITY"),
        ({"PER_ALPHA": 1.5}, "PER_ALPHA"),
        ({"PER_BETA_INITIAL": -0.1}, "PER_BETA_INITIAL"),
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
        ({"NOT_A_FIELD": 1}, "NOT_A_FIELD"),
    ],
)
def test_train_config_rejects_bad_values(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TrainConfig(**fields)  # type: ignore[arg-type]


def test_model_config_checks_layers() -> None:
    with pytest.raises(ValidationError, match="one kernel size per convolution"):
        ModelConfig(CONV_FILTERS=[8, 8], CONV_KERNEL_SIZES=[3])
    with pytest.raises(ValidationError, match="odd"):
        ModelConfig(CONV_FILTERS=[8], CONV_KERNEL_SIZES=[2])
    with pytest.raises(ValidationError, match="FC_DIMS_SHARED"):
        ModelConfig(FC_DIMS_SHARED=[0])


def test_defaults_are_the_1_0_0_shapes() -> None:
    env = EnvConfig()
    assert (env.ROWS, env.COLS, env.NUM_SHAPE_SLOTS, env.ACTION_DIM) == (8, 15, 3, 360)
    model = ModelConfig()
    assert (model.GRID_INPUT_CHANNELS, model.OTHER_NN_INPUT_FEATURES_DIM) == (2, 30)
    with pytest.raises(ValidationError):
        env.ROWS = 3  # type: ignore[misc]  # frozen
