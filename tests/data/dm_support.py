"""What the DataManager's tests share: configs for a small run, and a network, optimizer and
replay buffer that train for real (a user's parts, seeded)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alphatriangle.config import EnvConfig, ModelConfig, PersistenceConfig, TrainConfig
from alphatriangle.data import DataManager
from alphatriangle.rl.core import ExperienceBuffer
from alphatriangle.utils.types import ColumnarBatch

LEGACY_RUN = (
    Path(__file__).resolve().parents[1]
    / "fixtures/legacy-alphatriangle-1.0.0/runs/train_20250410_093000"
)


def make_persist(root: Path, **fields: Any) -> PersistenceConfig:
    return PersistenceConfig(ROOT_DATA_DIR=str(root), MLFLOW_SYNC=False, **fields)


def make_train(run: str = "train_20260101_000000", **fields: Any) -> TrainConfig:
    defaults: dict[str, Any] = {
        "BUFFER_CAPACITY": 64,
        "MIN_BUFFER_SIZE_TO_TRAIN": 8,
        "BATCH_SIZE": 8,
        "CHECKPOINT_SAVE_FREQ_STEPS": 5,
        "DEVICE": "cpu",
    }
    return TrainConfig(RUN_NAME=run, **{**defaults, **fields})


class Net(torch.nn.Module):
    """A small policy/value network: what a user of the DataManager may pass as ``nn``."""

    def __init__(self, grid_shape: tuple[int, ...], other_dim: int, action_dim: int) -> None:
        super().__init__()
        self.body = torch.nn.Linear(math.prod(grid_shape) + other_dim, 32)
        self.policy = torch.nn.Linear(32, action_dim)
        self.value = torch.nn.Linear(32, 1)

    def forward(self, grid: torch.Tensor, other: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = torch.relu(self.body(torch.cat([grid.flatten(1), other], 1)))
        return self.policy(hidden), self.value(hidden).squeeze(1)


class Parts:
    """A network, its optimizer and a replay buffer, seeded."""

    def __init__(self, train: TrainConfig, seed: int = 0, channels: int = 1) -> None:
        torch.manual_seed(seed)
        model = ModelConfig(GRID_INPUT_CHANNELS=channels)
        self.buffer = ExperienceBuffer(train, EnvConfig(), model, seed=seed)
        self.nn = Net(self.buffer.grid_shape, self.buffer.other_dim, self.buffer.action_dim)
        self.optimizer = torch.optim.Adam(self.nn.parameters(), lr=1e-3)

    def fill(self, count: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        buffer = self.buffer
        policy = rng.random((count, buffer.action_dim), dtype=np.float32)
        buffer.add_batch(
            ColumnarBatch(
                grid=rng.random((count, *buffer.grid_shape), dtype=np.float32),
                other_features=rng.random((count, buffer.other_dim), dtype=np.float32),
                policy_target=policy / policy.sum(axis=1, keepdims=True),
                value_target=rng.standard_normal(count),
            )
        )

    def train_step(self, step: int) -> float:
        sample = self.buffer.sample(8, current_train_step=step)
        assert sample is not None
        batch = sample["batch"]
        logits, value = self.nn(
            torch.from_numpy(batch["grid"]), torch.from_numpy(batch["other_features"])
        )
        target = torch.from_numpy(batch["policy_target"])
        loss = (
            -(target * torch.log_softmax(logits, 1)).sum(1).mean()
            + ((value - torch.from_numpy(batch["value_target"]).float()) ** 2).mean()
        )
        self.optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        errors = (value.detach() - torch.from_numpy(batch["value_target"]).float()).numpy()
        self.buffer.update_priorities(sample["indices"], errors)
        self.fill(2, seed=1000 + step)  # self-play goes on: new experiences each step
        return float(loss.detach())


def save_step(dm: DataManager, parts: Parts, step: int, **kwargs: Any) -> Any:
    return dm.save_training_state(
        parts.nn, parts.optimizer, None, parts.buffer, step, step * 2, step * 10, **kwargs
    )
