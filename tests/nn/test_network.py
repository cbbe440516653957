"""The policy/value network is alphatriangle 1.0.0's: the real 1.0.0 run's weights load
strictly and give the outputs 1.0.0 gave; any ModelConfig's weights round-trip through the
checkpoint engine; weights of another architecture are refused naming the fields."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from alphatriangle.config import EnvConfig, ModelConfig, TrainConfig
from alphatriangle.data.checkpoint import CheckpointManager
from alphatriangle.data.legacy import load_legacy_checkpoint
from alphatriangle.nn import NeuralNetwork
from alphatriangle.utils.types import StateType

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures/alphatriangle-1.0.0-real"
RUN = FIXTURE / "runs/train_20250421_101500"
CPU_TRAIN = TrainConfig(DEVICE="cpu")


def _states(count: int, channels: int = 1, seed: int = 0) -> list[StateType]:
    rng = np.random.default_rng(seed)
    return [
        StateType(
            grid=(rng.random((channels, 8, 15)) < 0.3).astype(np.float32),
            other_features=rng.random(30, dtype=np.float32),
        )
        for _ in range(count)
    ]


def _real_network(checkpoint: str = "latest.pkl") -> NeuralNetwork:
    data = load_legacy_checkpoint(RUN / "checkpoints" / checkpoint)
    network = NeuralNetwork(
        ModelConfig(**data.model_config_dict), EnvConfig(**data.env_config_dict), CPU_TRAIN
    )
    network.set_weights(data.model_state_dict)
    return network


def test_the_default_network_is_1_0_0_s() -> None:
    torch.manual_seed(0)
    network = NeuralNetwork(ModelConfig(), EnvConfig(), CPU_TRAIN)
    state = network.model.state_dict()
    # What 1.0.0's AlphaTriangleNet(ModelConfig(), EnvConfig()) has (trianglengin 1.0.6).
    assert len(state) == 94
    assert sum(p.numel() for p in network.model.parameters()) == 3_005_819
    assert state["conv_body.0.0.weight"].shape == (32, 1, 3, 3)  # GRID_INPUT_CHANNELS = 1
    assert state["shared_fc.0.weight"].shape == (128, 128 * 8 * 15 + 30)
    logits, value_logits = network.model(torch.zeros(5, 1, 8, 15), torch.zeros(5, 30))
    assert logits.shape == (5, 360) and value_logits.shape == (5, 51)
    policy, value = network.evaluate(_states(1)[0])
    assert sorted(policy) == list(range(360)) and abs(sum(policy.values()) - 1.0) < 1e-5
    assert isinstance(value, float) and -10.0 <= value <= 10.0
    outputs = network.evaluate_batch(_states(4))
    assert len(outputs) == 4 and all(len(p) == 360 for p, _ in outputs)
    probs, values = network.predict(
        np.stack([s["grid"] for s in _states(3)]),
        np.stack([s["other_features"] for s in _states(3)]),
    )
    assert probs.shape == (3, 360) and values.shape == (3,)
    assert network.model.training  # predict leaves the mode as it found it


def test_the_real_1_0_0_weights_load_strictly_and_give_1_0_0_s_outputs() -> None:
    expected = json.loads((FIXTURE / "expected.json").read_text())
    probe = np.load(FIXTURE / "probe_inputs.npz")
    network = _real_network()
    state = network.model.state_dict()
    assert len(state) == expected["n_state_dict_keys"]
    assert sum(float(v.double().sum()) for v in state.values()) == pytest.approx(
        expected["param_sum"], abs=1e-6
    )
    assert tuple(probe["grid"].shape[1:]) == tuple(expected["grid_shape"])
    network.model.eval()
    with torch.no_grad():
        logits, value_logits = network.model(
            torch.from_numpy(probe["grid"]), torch.from_numpy(probe["other"])
        )
    np.testing.assert_allclose(logits.numpy(), expected["policy_logits"], atol=1e-4, rtol=0)
    assert value_logits.shape[1] == expected["num_value_atoms"]
    np.testing.assert_allclose(
        network.expected_value(value_logits).numpy(), expected["expected_value"], atol=1e-4, rtol=0
    )
    # evaluate/predict give the same expected values and the softmax of the same logits.
    probs, values = network.predict(probe["grid"], probe["other"])
    np.testing.assert_allclose(values, expected["expected_value"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(
        probs, torch.softmax(torch.tensor(expected["policy_logits"]), 1).numpy(), atol=1e-5
    )
    policy, value = network.evaluate(
        StateType(grid=probe["grid"][0], other_features=probe["other"][0])
    )
    assert value == pytest.approx(expected["expected_value"][0], abs=1e-4)
    assert policy[0] == pytest.approx(float(probs[0, 0]), abs=1e-6)


def test_weights_of_another_architecture_are_refused_naming_the_fields() -> None:
    data = load_legacy_checkpoint(RUN / "checkpoints/latest.pkl")
    network = NeuralNetwork(
        ModelConfig(**{**data.model_config_dict, "TRANSFORMER_FC_DIM": 64}), EnvConfig(), CPU_TRAIN
    )
    with pytest.raises(ValueError, match=r"see ModelConfig\.USE_TRANSFORMER.*TRANSFORMER_FC_DIM"):
        network.set_weights(data.model_state_dict)
    with pytest.raises(
        ValueError, match=r"linear1.weight is \(32, 16\) in step 6, \(64, 16\) here"
    ):
        network.check_weights(data.model_state_dict, "step 6")
    no_transformer = NeuralNetwork(
        ModelConfig(**{**data.model_config_dict, "USE_TRANSFORMER": False}), EnvConfig(), CPU_TRAIN
    )
    with pytest.raises(ValueError, match=r"pos_encoder.pe \(5000, 1, 16\) is in the weights, not"):
        no_transformer.set_weights(data.model_state_dict)
    no_norms = NeuralNetwork(
        ModelConfig(**{**data.model_config_dict, "USE_BATCH_NORM": False}), EnvConfig(), CPU_TRAIN
    )
    with pytest.raises(
        ValueError, match=r"\(\d+ tensors differ\); see ModelConfig.USE_BATCH_NORM;"
    ):
        no_norms.set_weights(data.model_state_dict)


def test_a_config_the_grid_cannot_carry_is_refused_naming_the_fields() -> None:
    config = ModelConfig(CONV_FILTERS=[4], CONV_KERNEL_SIZES=[9], CONV_PADDING=[0])
    with pytest.raises(ValueError, match=r"CONV_KERNEL_SIZES=\[9\].*8 x 15 grid"):
        NeuralNetwork(config, EnvConfig(), CPU_TRAIN)


def test_weights_round_trip_between_networks() -> None:
    torch.manual_seed(0)
    source = NeuralNetwork(ModelConfig(), EnvConfig(), CPU_TRAIN)
    target = NeuralNetwork(ModelConfig(), EnvConfig(), CPU_TRAIN)
    state = _states(1)[0]
    assert source.evaluate(state) != target.evaluate(state)
    weights = source.get_weights()
    assert all(t.device.type == "cpu" and not t.requires_grad for t in weights.values())
    target.set_weights(weights)
    assert source.evaluate(state) == target.evaluate(state)
    weights[next(iter(weights))].add_(1.0)  # the copy is detached from the source
    assert source.evaluate(state) == target.evaluate(state)


_TRANSFORMER_ACTIVATIONS = st.sampled_from(["ReLU", "GELU"])


@st.composite
def _model_configs(draw: st.DrawFn) -> tuple[ModelConfig, EnvConfig]:
    layers = draw(st.integers(1, 2))
    kernels = draw(st.lists(st.sampled_from([1, 3, (3, 1)]), min_size=layers, max_size=layers))
    use_transformer = draw(st.booleans())
    heads = draw(st.integers(1, 2))
    fields: dict[str, Any] = {
        "GRID_INPUT_CHANNELS": draw(st.integers(1, 3)),
        "CONV_FILTERS": draw(st.lists(st.integers(1, 6), min_size=layers, max_size=layers)),
        "CONV_KERNEL_SIZES": kernels,
        "CONV_STRIDES": draw(
            st.lists(st.sampled_from([1, (1, 2)]), min_size=layers, max_size=layers)
        ),
        "NUM_RESIDUAL_BLOCKS": draw(st.integers(0, 2)),
        "RESIDUAL_BLOCK_FILTERS": draw(st.integers(1, 6)),
        "USE_TRANSFORMER": use_transformer,
        "TRANSFORMER_DIM": heads * draw(st.integers(1, 4)),
        "TRANSFORMER_HEADS": heads,
        "TRANSFORMER_LAYERS": draw(st.integers(0, 2)),
        "TRANSFORMER_FC_DIM": draw(st.integers(1, 8)),
        "FC_DIMS_SHARED": draw(st.lists(st.integers(1, 12), max_size=2)),
        "POLICY_HEAD_DIMS": draw(st.lists(st.integers(1, 12), max_size=2)),
        "VALUE_HEAD_DIMS": draw(st.lists(st.integers(1, 12), max_size=2)),
        "NUM_VALUE_ATOMS": draw(st.integers(2, 11)),
        "ACTIVATION_FUNCTION": draw(
            _TRANSFORMER_ACTIVATIONS
            if use_transformer
            else st.sampled_from(["ReLU", "GELU", "SiLU", "Tanh", "Sigmoid"])
        ),
        "USE_BATCH_NORM": draw(st.booleans()),
        "OTHER_NN_INPUT_FEATURES_DIM": draw(st.integers(1, 6)),
    }
    env = EnvConfig(ROWS=draw(st.integers(2, 5)), COLS=draw(st.integers(2, 5)), NUM_SHAPE_SLOTS=2)
    return ModelConfig(**fields), env


@pytest.mark.slow
@settings(max_examples=20)
@given(configs=_model_configs(), seed=st.integers(0, 2**31 - 1))
def test_any_architecture_round_trips_its_weights_through_the_engine(
    configs: tuple[ModelConfig, EnvConfig], seed: int
) -> None:
    model_config, env_config = configs
    torch.manual_seed(seed)
    source = NeuralNetwork(model_config, env_config, CPU_TRAIN)
    for buffer in source.model.buffers():  # batch-norm statistics: not the defaults
        if buffer.is_floating_point():
            buffer.add_(torch.rand_like(buffer))
    source.model.eval()
    with tempfile.TemporaryDirectory() as directory, CheckpointManager(directory) as manager:
        manager.save(
            3, {"model_config": model_config.model_dump(mode="json"), "model": source.get_weights()}
        )
        manager.wait_until_finished()
        restored = manager.restore(3)
    rebuilt_config = ModelConfig(**restored["model_config"])
    assert rebuilt_config == model_config
    target = NeuralNetwork(rebuilt_config, env_config, CPU_TRAIN)
    target.set_weights(restored["model"])
    assert target.get_weights().keys() == source.get_weights().keys()
    for key, value in source.get_weights().items():
        assert torch.equal(target.get_weights()[key], value), key
    target.model.eval()
    grid = torch.rand(2, model_config.GRID_INPUT_CHANNELS, env_config.ROWS, env_config.COLS)
    other = torch.rand(2, model_config.OTHER_NN_INPUT_FEATURES_DIM)
    with torch.no_grad():
        for ours, theirs in zip(source.model(grid, other), target.model(grid, other), strict=True):
            assert torch.equal(ours, theirs)
