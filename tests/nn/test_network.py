"""The policy/value network: shapes, weights round trip, and that it learns."""

from __future__ import annotations

import numpy as np
import torch

from alphatriangle.config import EnvConfig, ModelConfig, TrainConfig
from alphatriangle.nn import NeuralNetwork
from alphatriangle.utils.types import StateType


def _network(seed: int = 0) -> NeuralNetwork:
    torch.manual_seed(seed)
    return NeuralNetwork(ModelConfig(), EnvConfig(), TrainConfig(), torch.device("cpu"))


def _states(count: int, seed: int = 0) -> list[StateType]:
    rng = np.random.default_rng(seed)
    return [
        StateType(
            grid=rng.random((2, 8, 15), dtype=np.float32),
            other_features=rng.random(30, dtype=np.float32),
        )
        for _ in range(count)
    ]


def test_outputs_have_the_1_0_0_shapes() -> None:
    network = _network()
    grid = torch.zeros(5, 2, 8, 15)
    logits, value = network.model(grid, torch.zeros(5, 30))
    assert logits.shape == (5, 360) and value.shape == (5,)
    policy, v = network.evaluate(_states(1)[0])
    assert sorted(policy) == list(range(360))
    assert abs(sum(policy.values()) - 1.0) < 1e-5 and isinstance(v, float)
    outputs = network.evaluate_batch(_states(4))
    assert len(outputs) == 4 and all(len(p) == 360 for p, _ in outputs)
    assert network.model_config == ModelConfig() and network.env_config == EnvConfig()
    assert network.device == torch.device("cpu")


def test_weights_round_trip_between_networks() -> None:
    source, target = _network(0), _network(1)
    state = _states(1)[0]
    assert source.evaluate(state) != target.evaluate(state)
    weights = source.get_weights()
    assert all(t.device.type == "cpu" and not t.requires_grad for t in weights.values())
    target.set_weights(weights)
    assert source.evaluate(state) == target.evaluate(state)
    weights[next(iter(weights))].add_(1.0)  # the copy is detached from the source
    assert source.evaluate(state) == target.evaluate(state)


def test_a_few_training_steps_lower_the_loss_on_a_fixed_batch() -> None:
    network = _network()
    rng = np.random.default_rng(1)
    states = _states(32)
    grid = torch.from_numpy(np.stack([s["grid"] for s in states]))
    other = torch.from_numpy(np.stack([s["other_features"] for s in states]))
    policy_target = torch.from_numpy(rng.dirichlet(np.full(360, 0.05), size=32).astype(np.float32))
    value_target = torch.from_numpy(rng.uniform(-1, 1, 32).astype(np.float32))
    optimizer = torch.optim.Adam(network.model.parameters(), lr=3e-3)

    def loss() -> torch.Tensor:
        logits, value = network.model(grid, other)
        policy_loss = -(policy_target * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
        return policy_loss + torch.nn.functional.mse_loss(value, value_target)

    before = loss().item()
    for _ in range(40):
        optimizer.zero_grad()
        step_loss = loss()
        step_loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    assert loss().item() < 0.7 * before
