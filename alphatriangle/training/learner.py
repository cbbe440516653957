"""The learner's optimisation step on a batch from the replay buffer."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from alphatriangle.config import TrainConfig
from alphatriangle.nn import NeuralNetwork
from alphatriangle.utils.types import PERBatchSample

__all__ = ["Learner"]


class Learner:
    """AdamW on ``policy cross-entropy + VALUE_LOSS_WEIGHT * value squared error``, each
    example weighted by its importance weight; gradients clipped to
    ``GRADIENT_CLIP_VALUE``. ``train_step`` returns the losses and the value errors that
    become the sampled experiences' new priorities."""

    def __init__(self, network: NeuralNetwork, config: TrainConfig) -> None:
        self.network, self.config = network, config
        self.optimizer = torch.optim.AdamW(
            network.model.parameters(), lr=config.LEARNING_RATE, weight_decay=config.WEIGHT_DECAY
        )

    def train_step(
        self, sample: PERBatchSample
    ) -> tuple[dict[str, float], np.ndarray[Any, np.dtype[np.float64]]]:
        device = self.network.device
        batch = sample["batch"]
        grid = torch.from_numpy(batch["grid"]).to(device)
        other = torch.from_numpy(batch["other_features"]).to(device)
        policy_target = torch.from_numpy(batch["policy_target"]).to(device)
        value_target = torch.from_numpy(batch["value_target"]).to(device, torch.float32)
        weights = torch.from_numpy(sample["weights"]).to(device)
        model = self.network.model
        model.train()
        logits, value = model(grid, other)
        policy_loss = -(policy_target * torch.log_softmax(logits, dim=1)).sum(dim=1)
        value_error = value - value_target
        value_loss = value_error.square()
        loss = (weights * (policy_loss + self.config.VALUE_LOSS_WEIGHT * value_loss)).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.GRADIENT_CLIP_VALUE is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.config.GRADIENT_CLIP_VALUE)
        self.optimizer.step()
        losses = {
            "loss": float(loss.detach()),
            "policy_loss": float(policy_loss.detach().mean()),
            "value_loss": float(value_loss.detach().mean()),
        }
        return losses, value_error.detach().cpu().numpy().astype(np.float64)
