"""A run written by the released alphatriangle 1.0.0 (tests/fixtures/alphatriangle-1.0.0-real,
see its README): its configs build, its buffer's experiences load into a buffer shaped by
those configs, its network resumes; a checkpoint whose weights cannot fit is an error naming
the config field."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from alphatriangle.config import EnvConfig, ModelConfig, RunConfigs, TrainConfig
from alphatriangle.data.legacy import load_legacy_buffer, load_legacy_checkpoint
from alphatriangle.nn import NeuralNetwork
from alphatriangle.rl.core import ExperienceBuffer
from alphatriangle.training.learner import Learner
from alphatriangle.training.resume import (
    configs_of_checkpoint,
    optimizer_type_of,
    position_scheduler,
)

FIXTURE = Path(__file__).parents[1] / "fixtures" / "alphatriangle-1.0.0-real"
RUN = FIXTURE / "runs" / "train_20250421_101500"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())


def _checkpoint() -> Any:
    return load_legacy_checkpoint(RUN / "checkpoints" / "latest.pkl")


def test_the_buffer_loads_into_a_buffer_shaped_by_the_run_configs() -> None:
    checkpoint = _checkpoint()
    model = ModelConfig.model_validate(checkpoint.model_config_dict)
    env = EnvConfig.model_validate(checkpoint.env_config_dict)
    train = TrainConfig(BUFFER_CAPACITY=64, MIN_BUFFER_SIZE_TO_TRAIN=8, BATCH_SIZE=8)
    buffer = ExperienceBuffer(train, env, model)
    assert buffer.grid_shape == (1, 8, 15) and buffer.other_dim == 30 and buffer.action_dim == 360

    saved = load_legacy_buffer(RUN / "buffers" / "buffer.pkl").buffer_list
    assert len(saved) == 40
    buffer.add_batch(saved)
    assert len(buffer) == 40
    # Every experience back, in order; 1.0.0 saved no priorities: each gets the highest.
    for (state, policy, value), again in zip(saved, buffer.to_experiences(), strict=True):
        np.testing.assert_array_equal(again[0]["grid"], state["grid"])
        np.testing.assert_array_equal(again[0]["other_features"], state["other_features"])
        assert again[1] == pytest.approx(dict(policy), rel=1e-6)
        assert again[2] == value
    assert np.all(buffer.tree.leaves()[:40] == buffer.max_priority)
    sample = buffer.sample(8, current_train_step=6)
    assert sample is not None and sample["batch"]["grid"].shape == (8, 1, 8, 15)


def test_a_buffer_of_other_shapes_names_the_column() -> None:
    saved = load_legacy_buffer(RUN / "buffers" / "buffer.pkl").buffer_list
    two_channels = ModelConfig(GRID_INPUT_CHANNELS=2)
    train = TrainConfig(BUFFER_CAPACITY=64, MIN_BUFFER_SIZE_TO_TRAIN=8, BATCH_SIZE=8)
    buffer = ExperienceBuffer(train, EnvConfig(), two_channels)
    with pytest.raises(ValueError, match=r"column 'grid' has shape \(40, 1, 8, 15\), expected"):
        buffer.add_batch(saved)


def test_resume_takes_the_model_game_and_optimizer_of_the_checkpoint() -> None:
    checkpoint = _checkpoint()
    configs = RunConfigs.build(None, {"OPTIMIZER_TYPE": "SGD", "LEARNING_RATE": 0.1})
    resumed, changed = configs_of_checkpoint(configs, checkpoint, RUN / "configs.json")
    assert resumed.model.CONV_FILTERS == [8, 16] and resumed.model.NUM_VALUE_ATOMS == 51
    assert resumed.env.PLAYABLE_RANGE_PER_ROW == EnvConfig().PLAYABLE_RANGE_PER_ROW
    assert resumed.train.OPTIMIZER_TYPE == EXPECTED["optimizer"] == "AdamW"
    assert resumed.train.LR_SCHEDULER_TYPE == "CosineAnnealingLR"
    assert resumed.train.LR_SCHEDULER_T_MAX == 1000 and resumed.train.LEARNING_RATE == 2e-4
    assert resumed.train.BATCH_SIZE == configs.train.BATCH_SIZE  # the rest stays the run's
    assert "ModelConfig.CONV_FILTERS" in changed and "TrainConfig.OPTIMIZER_TYPE" in changed
    # Without the run's configs.json, the optimizer state itself tells its type.
    assert optimizer_type_of(checkpoint.optimizer_state_dict) == "AdamW"
    resumed, _ = configs_of_checkpoint(configs, checkpoint, None)
    assert resumed.train.OPTIMIZER_TYPE == "AdamW"


def test_a_checkpoint_whose_configs_cannot_be_built_names_the_field() -> None:
    checkpoint = _checkpoint()
    bad = checkpoint.model_copy(
        update={"model_config_dict": {**checkpoint.model_config_dict, "CONV_STRIDES": [1]}}
    )
    with pytest.raises(
        ValueError, match=r"model_config_dict cannot build a ModelConfig.*CONV_STRIDES"
    ):
        configs_of_checkpoint(RunConfigs(), bad, None)
    bad = checkpoint.model_copy(
        update={"env_config_dict": {**checkpoint.env_config_dict, "ROWS": 9}}
    )
    with pytest.raises(ValueError, match=r"env_config_dict cannot build an? EnvConfig"):
        configs_of_checkpoint(RunConfigs(), bad, None)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"CONV_FILTERS": [8, 32]}, "ModelConfig.CONV_FILTERS, CONV_KERNEL_SIZES"),
        ({"USE_BATCH_NORM": False}, "ModelConfig.USE_BATCH_NORM"),
        ({"NUM_VALUE_ATOMS": 21}, "ModelConfig.VALUE_HEAD_DIMS, NUM_VALUE_ATOMS"),
        ({"USE_TRANSFORMER": False}, "ModelConfig.USE_TRANSFORMER"),
    ],
)
def test_weights_that_do_not_fit_name_the_field(fields: dict[str, Any], named: str) -> None:
    checkpoint = _checkpoint()
    model = ModelConfig.model_validate({**checkpoint.model_config_dict, **fields})
    env = EnvConfig.model_validate(checkpoint.env_config_dict)
    network = NeuralNetwork(model, env, TrainConfig(), device="cpu")
    with pytest.raises(ValueError, match="do not fit the network its configs describe") as info:
        network.check_weights(checkpoint.model_state_dict, "the checkpoint")
    assert named in str(info.value)
    assert "Error(s) in loading state_dict" not in str(info.value)
    # What does fit passes, and then loads strictly.
    model = ModelConfig.model_validate(checkpoint.model_config_dict)
    network = NeuralNetwork(model, env, TrainConfig(), device="cpu")
    network.check_weights(checkpoint.model_state_dict, "the checkpoint")
    network.set_weights(checkpoint.model_state_dict)


def test_the_optimizer_state_loads_and_the_schedule_goes_on_from_the_step() -> None:
    checkpoint = _checkpoint()
    resumed, _ = configs_of_checkpoint(RunConfigs(), checkpoint, RUN / "configs.json")
    network = NeuralNetwork(resumed.model, resumed.env, resumed.train, device="cpu")
    network.set_weights(checkpoint.model_state_dict)
    learner = Learner(network, resumed.train)
    learner.optimizer.load_state_dict(checkpoint.optimizer_state_dict)
    assert type(learner.optimizer).__name__ == EXPECTED["optimizer"]
    assert len(learner.optimizer.state) == EXPECTED["optimizer_state_entries"]
    scheduler = learner.scheduler
    assert type(scheduler).__name__ == EXPECTED["scheduler"]
    position_scheduler(scheduler, learner.optimizer, checkpoint.global_step)

    def cosine(step: int) -> float:  # 1.0.0's schedule: T_max 1000, 2e-4 down to 1e-6
        return 1e-6 + (2e-4 - 1e-6) * (1 + math.cos(math.pi * step / 1000)) / 2

    assert learner.optimizer.param_groups[0]["lr"] == pytest.approx(cosine(6), rel=1e-9)
    for step in (7, 8):
        learner.optimizer.step()
        scheduler.step()
        assert learner.optimizer.param_groups[0]["lr"] == pytest.approx(cosine(step), rel=1e-9)
