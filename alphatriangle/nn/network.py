"""``NeuralNetwork``: the policy/value network with the interface 1.0.0 gave it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from alphatriangle.config import EnvConfig, ModelConfig, TrainConfig
from alphatriangle.nn.model import AlphaTriangleNet
from alphatriangle.utils.types import PolicyValueOutput, StateType

__all__ = ["NeuralNetwork", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    """``"auto"``: CUDA when available, else the CPU; anything else as torch reads it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class NeuralNetwork:
    """Wraps :class:`AlphaTriangleNet` for self-play and training.

    - ``evaluate(state)`` / ``evaluate_batch(states)``: policy mappings (action ->
      probability, over every action) and values, without gradients;
    - ``predict(grids, other_features)``: the same for stacked numpy arrays, as arrays;
    - ``get_weights()`` / ``set_weights(weights)``: CPU state dicts, to ship to self-play
      workers (through the Ray object store, say).
    """

    def __init__(
        self,
        model_config: ModelConfig,
        env_config: EnvConfig,
        train_config: TrainConfig,
        device: torch.device | str | None = None,
    ) -> None:
        self.model_config = model_config
        self.env_config = env_config
        self.train_config = train_config
        self.device = (
            resolve_device(train_config.DEVICE) if device is None else torch.device(device)
        )
        self.model = AlphaTriangleNet(model_config, env_config).to(self.device)
        self.action_dim = env_config.ACTION_DIM

    def _tensors(
        self, grids: np.ndarray[Any, Any], others: np.ndarray[Any, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        grid = torch.as_tensor(grids, dtype=torch.float32, device=self.device)
        other = torch.as_tensor(others, dtype=torch.float32, device=self.device)
        return grid, other

    @torch.inference_mode()
    def predict(
        self, grids: np.ndarray[Any, Any], other_features: np.ndarray[Any, Any]
    ) -> tuple[np.ndarray[Any, np.dtype[np.float32]], np.ndarray[Any, np.dtype[np.float32]]]:
        """Policy probabilities (N, ACTION_DIM) and values (N,) for stacked states."""
        was_training = self.model.training
        self.model.eval()
        try:
            logits, values = self.model(*self._tensors(grids, other_features))
        finally:
            self.model.train(was_training)
        probs = torch.softmax(logits.float(), dim=1)
        return probs.cpu().numpy(), values.float().cpu().numpy()

    def evaluate_batch(self, states: Sequence[StateType]) -> list[PolicyValueOutput]:
        """(policy mapping over every action, value) per state."""
        if not states:
            return []
        grids = np.stack([s["grid"] for s in states])
        others = np.stack([s["other_features"] for s in states])
        probs, values = self.predict(grids, others)
        return [
            (dict(enumerate(row.tolist())), float(value))
            for row, value in zip(probs, values, strict=True)
        ]

    def evaluate(self, state: StateType) -> PolicyValueOutput:
        """(policy mapping over every action, value) of one state."""
        return self.evaluate_batch([state])[0]

    def get_weights(self) -> dict[str, torch.Tensor]:
        """The model's state dict, on the CPU, detached (safe to ship and to keep)."""
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def set_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Load a state dict from :meth:`get_weights` (any device); strict about keys."""
        self.model.load_state_dict(weights)
