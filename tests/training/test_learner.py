"""The learner trains 1.0.0's network as 1.0.0's Trainer did: C51 value targets, policy
cross-entropy, entropy bonus, importance weights, the optimizer and schedule the config
names; the real 1.0.0 run's optimizer state loads into it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from alphatriangle.config import EnvConfig, ModelConfig, TrainConfig
from alphatriangle.data.legacy import load_legacy_checkpoint
from alphatriangle.nn import NeuralNetwork
from alphatriangle.training import Learner
from alphatriangle.training.learner import project_onto_atoms
from alphatriangle.training.resume import position_scheduler
from alphatriangle.utils.types import ColumnarBatch, PERBatchSample

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures/alphatriangle-1.0.0-real"
RUN = FIXTURE / "runs/train_20250421_101500"
SMALL_MODEL = ModelConfig(
    CONV_FILTERS=[4],
    CONV_KERNEL_SIZES=[3],
    NUM_RESIDUAL_BLOCKS=1,
    RESIDUAL_BLOCK_FILTERS=4,
    TRANSFORMER_DIM=4,
    TRANSFORMER_HEADS=2,
    TRANSFORMER_LAYERS=1,
    TRANSFORMER_FC_DIM=8,
    FC_DIMS_SHARED=[32],
    POLICY_HEAD_DIMS=[],
    VALUE_HEAD_DIMS=[16],
)


def _train(**fields: Any) -> TrainConfig:
    defaults: dict[str, Any] = {
        "DEVICE": "cpu",
        "BATCH_SIZE": 16,
        "BUFFER_CAPACITY": 64,
        "MIN_BUFFER_SIZE_TO_TRAIN": 16,
        "MAX_TRAINING_STEPS": 1000,
    }
    return TrainConfig(**{**defaults, **fields})


def _sample(count: int = 16, seed: int = 0, weight: float = 1.0) -> PERBatchSample:
    rng = np.random.default_rng(seed)
    policy = rng.dirichlet(np.full(360, 0.05), size=count).astype(np.float32)
    return PERBatchSample(
        batch=ColumnarBatch(
            grid=(rng.random((count, 1, 8, 15)) < 0.4).astype(np.float32),
            other_features=rng.random((count, 30), dtype=np.float32),
            policy_target=policy,
            value_target=rng.uniform(-3, 3, count),
        ),
        indices=np.arange(count, dtype=np.int64),
        weights=np.full(count, weight, dtype=np.float32),
    )


def _learner(seed: int = 0, model: ModelConfig = SMALL_MODEL, **fields: Any) -> Learner:
    torch.manual_seed(seed)
    train = _train(**fields)
    return Learner(NeuralNetwork(model, EnvConfig(), train), train)


@given(
    returns=st.lists(
        st.one_of(
            st.floats(-20, 20, allow_nan=False),
            st.integers(-12, 12).map(float),  # on an atom, and beyond the range
        ),
        min_size=1,
        max_size=20,
    ),
    atoms=st.integers(2, 60),
)
def test_the_c51_projection_is_a_distribution_with_the_return_as_its_mean(
    returns: list[float], atoms: int
) -> None:
    values = torch.tensor(returns)
    target = project_onto_atoms(values, -10.0, 10.0, atoms)
    assert target.shape == (len(returns), atoms) and bool((target >= 0).all())
    torch.testing.assert_close(target.sum(1), torch.ones(len(returns)))
    support = torch.linspace(-10.0, 10.0, atoms)
    torch.testing.assert_close((target * support).sum(1), values.clamp(-10, 10), atol=1e-4, rtol=0)


def test_a_return_on_an_atom_puts_all_its_mass_there() -> None:
    target = project_onto_atoms(torch.tensor([-10.0, 0.0, 10.0, 2.5]), -10.0, 10.0, 5)
    expected = torch.tensor(
        [[1.0, 0, 0, 0, 0], [0, 0, 1.0, 0, 0], [0, 0, 0, 0, 1.0], [0, 0, 0.5, 0.5, 0]]
    )
    torch.testing.assert_close(target, expected)


def test_training_on_a_fixed_batch_lowers_the_loss_and_the_td_errors() -> None:
    learner = _learner(LEARNING_RATE=3e-3, LR_SCHEDULER_TYPE=None)
    sample = _sample()
    first, errors = learner.train_step(sample)
    assert errors.dtype == np.float64 and errors.shape == (16,)
    assert set(first) == {"loss", "policy_loss", "value_loss", "entropy", "mean_td_error", "lr"}
    # Total = policy + value - 0.001 * entropy (1.0.0's default weights).
    assert first["loss"] == pytest.approx(
        first["policy_loss"] + first["value_loss"] - 0.001 * first["entropy"], rel=1e-5
    )
    for _ in range(40):
        last, last_errors = learner.train_step(sample)
    assert last["loss"] < 0.7 * first["loss"]
    assert last["value_loss"] < first["value_loss"] and last["policy_loss"] < first["policy_loss"]
    assert np.abs(last_errors).mean() < np.abs(errors).mean()
    assert last["mean_td_error"] == pytest.approx(float(np.abs(last_errors).mean()))


def test_importance_weights_scale_each_example_s_loss() -> None:
    losses = []
    for weight in (1.0, 2.0):
        # Without dropout or batch norm, the same seed gives the same forward pass.
        deterministic = SMALL_MODEL.model_copy(
            update={"USE_TRANSFORMER": False, "USE_BATCH_NORM": False}
        )
        learner = _learner(seed=3, model=deterministic, ENTROPY_BONUS_WEIGHT=0.0)
        losses.append(learner.train_step(_sample(weight=weight))[0])
    for name in ("policy_loss", "value_loss", "loss"):
        assert losses[1][name] == pytest.approx(2 * losses[0][name], rel=1e-5)


@pytest.mark.parametrize("kind", ["Adam", "AdamW", "SGD"])
def test_the_optimizer_is_the_one_the_config_names(kind: str) -> None:
    learner = _learner(OPTIMIZER_TYPE=kind, LEARNING_RATE=1e-3, WEIGHT_DECAY=0.01)
    expected = {"Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW, "SGD": torch.optim.SGD}
    assert type(learner.optimizer) is expected[kind]
    group = learner.optimizer.param_groups[0]
    assert (group["lr"], group["weight_decay"]) == (1e-3, 0.01)
    if kind == "SGD":
        assert group["momentum"] == 0.9  # 1.0.0's
    learner.train_step(_sample())


def test_the_schedules_follow_1_0_0_s_fields() -> None:
    cosine = _learner(LEARNING_RATE=1e-3, LR_SCHEDULER_T_MAX=10, LR_SCHEDULER_ETA_MIN=1e-5)
    for _ in range(4):
        used = cosine.train_step(_sample())[0]["lr"]
    assert used == pytest.approx(1e-5 + (1e-3 - 1e-5) * (1 + math.cos(math.pi * 3 / 10)) / 2)
    # T_MAX unset: the period is MAX_TRAINING_STEPS, as 1.0.0 set it.
    assert isinstance(cosine.scheduler, torch.optim.lr_scheduler.CosineAnnealingLR)
    assert _learner().scheduler.T_max == 1000  # type: ignore[union-attr]
    step = _learner(
        LEARNING_RATE=1e-3,
        LR_SCHEDULER_TYPE="StepLR",
        LR_SCHEDULER_STEP_SIZE=2,
        LR_SCHEDULER_GAMMA=0.5,
    )
    rates = [step.train_step(_sample())[0]["lr"] for _ in range(5)]
    assert rates == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4])
    constant = _learner(LR_SCHEDULER_TYPE=None)
    assert constant.scheduler is None
    assert {constant.train_step(_sample())[0]["lr"] for _ in range(3)} == {2e-4}


def test_the_real_1_0_0_optimizer_state_loads_and_training_goes_on() -> None:
    expected = json.loads((FIXTURE / "expected.json").read_text())
    saved = json.loads((RUN / "configs.json").read_text())
    data = load_legacy_checkpoint(RUN / "checkpoints/latest.pkl")
    model = ModelConfig(**data.model_config_dict)
    with pytest.warns(UserWarning, match="COMPILE_MODEL"):
        train = TrainConfig(**{**saved["TrainConfig"], "DEVICE": "cpu"})
    network = NeuralNetwork(model, EnvConfig(**data.env_config_dict), train)
    network.set_weights(data.model_state_dict)
    learner = Learner(network, train)
    assert type(learner.optimizer).__name__ == expected["optimizer"]
    assert type(learner.scheduler).__name__ == expected["scheduler"]
    learner.load_optimizer_state(data.optimizer_state_dict)
    state = learner.optimizer.state_dict()
    assert len(state["state"]) == expected["optimizer_state_entries"]
    assert all(int(entry["step"]) == expected["global_step"] for entry in state["state"].values())
    saved_lr = data.optimizer_state_dict["param_groups"][0]["lr"]
    assert learner.learning_rate == saved_lr
    # 1.0.0 saved no scheduler state: the schedule resumes at the checkpoint's step.
    position_scheduler(learner.scheduler, learner.optimizer, expected["global_step"])
    assert learner.learning_rate == pytest.approx(saved_lr, rel=1e-9)
    before = {k: v.clone() for k, v in network.get_weights().items()}
    losses, errors = learner.train_step(_sample(count=8))
    assert math.isfinite(losses["loss"]) and errors.shape == (8,)
    assert int(next(iter(learner.optimizer.state.values()))["step"]) == expected["global_step"] + 1
    assert any(not torch.equal(before[k], v) for k, v in network.get_weights().items())
    next_lr = 1e-6 + (2e-4 - 1e-6) * (1 + math.cos(math.pi * 7 / 1000)) / 2
    assert learner.learning_rate == pytest.approx(next_lr, rel=1e-6)


def test_an_optimizer_state_of_another_kind_or_network_is_refused() -> None:
    data = load_legacy_checkpoint(RUN / "checkpoints/latest.pkl")
    model = ModelConfig(**data.model_config_dict)
    for kind in ("Adam", "SGD"):
        train = _train(OPTIMIZER_TYPE=kind)
        learner = Learner(NeuralNetwork(model, EnvConfig(), train), train)
        with pytest.raises(ValueError, match=f"AdamW's, and TrainConfig.OPTIMIZER_TYPE is {kind}"):
            learner.load_optimizer_state(data.optimizer_state_dict)
    learner = _learner(OPTIMIZER_TYPE="AdamW")
    with pytest.raises(ValueError, match="another architecture"):
        learner.load_optimizer_state(data.optimizer_state_dict)
    wider = Learner(
        NeuralNetwork(
            ModelConfig(**{**data.model_config_dict, "FC_DIMS_SHARED": [33]}), EnvConfig(), _train()
        ),
        _train(),
    )
    with pytest.raises(ValueError, match=r"exp_avg.* shared_fc.0.weight \(33, 1950\)"):
        wider.load_optimizer_state(data.optimizer_state_dict)


def test_batch_norm_needs_batches_of_two() -> None:
    with pytest.raises(ValueError, match=r"BATCH_SIZE is 1 and ModelConfig\.USE_BATCH_NORM"):
        _learner(BATCH_SIZE=1)
    no_norm = SMALL_MODEL.model_copy(update={"USE_BATCH_NORM": False, "USE_TRANSFORMER": False})
    learner = _learner(model=no_norm, BATCH_SIZE=1)
    assert learner.train_step(_sample(count=1))[1].shape == (1,)
