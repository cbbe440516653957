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

# The parts of 1.0.0's network (state-dict key prefixes) and the config fields that shape them.
_PART_FIELDS = (
    ("conv_body.0.", "ModelConfig.GRID_INPUT_CHANNELS, CONV_FILTERS, CONV_KERNEL_SIZES"),
    ("conv_body.", "ModelConfig.CONV_FILTERS, CONV_KERNEL_SIZES"),
    ("res_body.", "ModelConfig.NUM_RESIDUAL_BLOCKS, RESIDUAL_BLOCK_FILTERS"),
    ("input_proj.", "ModelConfig.TRANSFORMER_DIM"),
    ("pos_encoder.", "ModelConfig.USE_TRANSFORMER, TRANSFORMER_DIM"),
    (
        "transformer_body.",
        "ModelConfig.USE_TRANSFORMER, TRANSFORMER_LAYERS, TRANSFORMER_DIM, TRANSFORMER_FC_DIM",
    ),
    ("shared_fc.0.", "ModelConfig.FC_DIMS_SHARED, OTHER_NN_INPUT_FEATURES_DIM (or the trunk)"),
    ("shared_fc.", "ModelConfig.FC_DIMS_SHARED"),
    ("policy_head.", "ModelConfig.POLICY_HEAD_DIMS, EnvConfig.ACTION_DIM"),
    ("value_head.", "ModelConfig.VALUE_HEAD_DIMS, NUM_VALUE_ATOMS"),
)


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
        """Load a state dict (any device), strictly; ValueError from :meth:`check_weights`
        when it is not one of this architecture."""
        self.check_weights(weights)
        self.model.load_state_dict(dict(weights))

    def check_weights(self, weights: Mapping[str, Any], where: str = "the weights") -> None:
        """ValueError when ``weights`` does not fit this network key for key and shape for
        shape, before torch sees it: how many tensors differ, the config fields that shape
        the parts they are in (the first difference's first; ``USE_BATCH_NORM`` first when
        only one side has batch norm), and the first few differences, in the network's
        order. ``where`` names the weights in the message."""
        expected = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
        saved = {k: tuple(v.shape) for k, v in weights.items() if isinstance(v, torch.Tensor)}
        problems: list[str] = []
        fields: list[str] = []
        for key in [*expected, *(k for k in weights if k not in expected)]:
            if key in expected and expected[key] == saved.get(key):
                continue
            if key not in weights:
                problems.append(f"{key} {expected[key]} is missing from {where}")
            elif key not in expected:
                problems.append(f"{key} {saved.get(key, '')} is in {where}, not in the network")
            else:
                shape = saved.get(key, f"a {type(weights[key]).__name__}")
                problems.append(f"{key} is {shape} in {where}, {expected[key]} here")
            part = next((f for prefix, f in _PART_FIELDS if key.startswith(prefix)), None)
            part = part or "a part this network does not have"
            if part not in fields:
                fields.append(part)
        if not problems:
            return
        if _has_norms(saved) != _has_norms(expected):
            fields.insert(0, "ModelConfig.USE_BATCH_NORM")
        raise ValueError(
            f"{where}: its weights do not fit the network its configs describe "
            f"({len(problems)} tensors differ); see {'; '.join(fields)}. First: "
            + "; ".join(problems[:3])
        )


def _has_norms(shapes: Mapping[str, Any]) -> bool:
    return any(key.endswith(".running_mean") for key in shapes)
