"""``NeuralNetwork``: the policy/value network with the interface alphatriangle 1.0.0 gave
it, its distributional value read as an expected value.

The value head gives logits over ``NUM_VALUE_ATOMS`` atoms evenly spaced on ``[VALUE_MIN,
VALUE_MAX]`` (``support``); the value the search uses is the expectation under their
softmax. Weights load strictly; a state dict of another architecture is refused with the
keys and shapes that differ and the config fields that shape them, before torch sees it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from alphatriangle.config import EnvConfig, ModelConfig, TrainConfig
from alphatriangle.nn.model import AlphaTriangleNet
from alphatriangle.utils.types import PolicyValueOutput, StateType

__all__ = ["NeuralNetwork", "resolve_device"]

# The first part of a state-dict key -> the config fields that shape those weights.
_FIELDS_BY_PART = {
    "conv_body": "GRID_INPUT_CHANNELS, CONV_FILTERS, CONV_KERNEL_SIZES, USE_BATCH_NORM",
    "res_body": "NUM_RESIDUAL_BLOCKS, RESIDUAL_BLOCK_FILTERS, USE_BATCH_NORM",
    "input_proj": "USE_TRANSFORMER, TRANSFORMER_DIM",
    "pos_encoder": "USE_TRANSFORMER, TRANSFORMER_LAYERS, TRANSFORMER_DIM",
    "transformer_body": "USE_TRANSFORMER, TRANSFORMER_LAYERS, TRANSFORMER_DIM, "
    "TRANSFORMER_HEADS, TRANSFORMER_FC_DIM",
    "shared_fc": "FC_DIMS_SHARED, OTHER_NN_INPUT_FEATURES_DIM, the grid size (EnvConfig)",
    "policy_head": "POLICY_HEAD_DIMS, EnvConfig's ACTION_DIM",
    "value_head": "VALUE_HEAD_DIMS, NUM_VALUE_ATOMS",
}


def resolve_device(name: str) -> torch.device:
    """``"auto"``: CUDA when available, else the CPU; anything else as torch reads it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class NeuralNetwork:
    """Wraps :class:`AlphaTriangleNet` for self-play and training.

    - ``model(grid, other_features)``: policy logits and value-distribution logits;
    - ``evaluate(state)`` / ``evaluate_batch(states)``: (policy mapping over every action,
      expected value) per state, without gradients, as 1.0.0 returned them (1.0.0 took
      trianglengin game states; these take the features, :class:`StateType`);
    - ``predict(grids, other_features)``: the same for stacked numpy arrays, as arrays;
    - ``expected_value(value_logits)``: the expectation over ``support``;
    - ``get_weights()`` / ``set_weights(weights)``: CPU state dicts, to ship to self-play
      workers and to restore. ``TrainConfig.COMPILE_MODEL`` is not acted on.
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
        self.num_atoms = model_config.NUM_VALUE_ATOMS
        self.v_min = model_config.VALUE_MIN
        self.v_max = model_config.VALUE_MAX
        self.delta_z = (self.v_max - self.v_min) / (self.num_atoms - 1)
        self.support = torch.linspace(self.v_min, self.v_max, self.num_atoms, device=self.device)

    def expected_value(self, value_logits: torch.Tensor) -> torch.Tensor:
        """(N, NUM_VALUE_ATOMS) logits -> (N,) expected values over ``support``."""
        probs = torch.softmax(value_logits.float(), dim=1)
        return (probs * self.support).sum(dim=1)

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
        """Policy probabilities (N, ACTION_DIM) and expected values (N,) for stacked
        states, in eval mode (batch norm on its running statistics, no dropout)."""
        was_training = self.model.training
        self.model.eval()
        try:
            logits, value_logits = self.model(*self._tensors(grids, other_features))
        finally:
            self.model.train(was_training)
        probs = torch.softmax(logits.float(), dim=1)
        return probs.cpu().numpy(), self.expected_value(value_logits).cpu().numpy()

    def evaluate_batch(self, states: Sequence[StateType]) -> list[PolicyValueOutput]:
        """(policy mapping over every action, expected value) per state."""
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
        """(policy mapping over every action, expected value) of one state."""
        return self.evaluate_batch([state])[0]

    def get_weights(self) -> dict[str, torch.Tensor]:
        """The model's state dict, on the CPU, detached (safe to ship and to keep)."""
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def set_weights(self, weights: Mapping[str, Any]) -> None:
        """Load a state dict (any device), strictly: ValueError naming the keys and shapes
        that differ from this architecture, and the config fields behind them."""
        self.check_weights(weights)
        self.model.load_state_dict(dict(weights))

    def check_weights(self, weights: Mapping[str, Any]) -> None:
        """ValueError when ``weights`` is not a state dict of this architecture."""
        own = self.model.state_dict()
        missing = [k for k in own if k not in weights]
        unexpected = [k for k in weights if k not in own]
        shapes = [
            f"{k} {tuple(weights[k].shape)} (this network: {tuple(v.shape)})"
            for k, v in own.items()
            if k in weights and tuple(getattr(weights[k], "shape", ())) != tuple(v.shape)
        ]
        if not (missing or unexpected or shapes):
            return
        parts = sorted(
            {k.split(".")[0] for k in [*missing, *unexpected]} | {s.split(".")[0] for s in shapes}
        )
        problems = []
        if missing:
            problems.append(f"missing {_some(missing)}")
        if unexpected:
            problems.append(f"unexpected {_some(unexpected)}")
        if shapes:
            problems.append(f"other shapes: {_some(shapes)}")
        fields = "; ".join(f"{p}: {_FIELDS_BY_PART.get(p, 'unknown part')}" for p in parts)
        raise ValueError(
            "the weights do not fit the network this ModelConfig builds ("
            + "; ".join(problems)
            + f"). The config fields that shape these parts: {fields}"
        )


def _some(items: list[str], limit: int = 4) -> str:
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown} and {len(items) - limit} more"
