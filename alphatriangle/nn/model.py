"""The policy/value network as a torch module."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from alphatriangle.config import EnvConfig, ModelConfig

__all__ = ["AlphaTriangleNet"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "ReLU": nn.ReLU,
    "GELU": nn.GELU,
    "SiLU": nn.SiLU,
    "Tanh": nn.Tanh,
}


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int, activation: type[nn.Module], batch_norm: bool) -> None:
        super().__init__()
        norm = nn.BatchNorm2d if batch_norm else nn.Identity
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=not batch_norm),
            norm(channels),
            activation(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=not batch_norm),
            norm(channels),
        )
        self.activation = activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.activation(x + self.body(x))
        return out


def _mlp(sizes: list[int], activation: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for inputs, outputs in itertools.pairwise(sizes):
        layers += [nn.Linear(inputs, outputs), activation()]
    return nn.Sequential(*layers)


class AlphaTriangleNet(nn.Module):
    """``model(grid, other_features) -> (policy_logits, value)``: grid (N, C, H, W), other
    features (N, F); logits (N, ACTION_DIM), value (N,)."""

    def __init__(self, model_config: ModelConfig, env_config: EnvConfig) -> None:
        super().__init__()
        activation = _ACTIVATIONS[model_config.ACTIVATION_FUNCTION]
        norm = nn.BatchNorm2d if model_config.USE_BATCH_NORM else nn.Identity
        trunk: list[nn.Module] = []
        channels = model_config.GRID_INPUT_CHANNELS
        for filters, kernel in zip(
            model_config.CONV_FILTERS, model_config.CONV_KERNEL_SIZES, strict=True
        ):
            trunk += [
                nn.Conv2d(channels, filters, kernel, padding=kernel // 2),
                norm(filters),
                activation(),
            ]
            channels = filters
        trunk += [
            _ResidualBlock(channels, activation, model_config.USE_BATCH_NORM)
            for _ in range(model_config.NUM_RESIDUAL_BLOCKS)
        ]
        self.trunk = nn.Sequential(*trunk)
        flat = channels * env_config.ROWS * env_config.COLS
        shared_in = flat + model_config.OTHER_NN_INPUT_FEATURES_DIM
        self.shared = _mlp([shared_in, *model_config.FC_DIMS_SHARED], activation)
        shared_out = model_config.FC_DIMS_SHARED[-1] if model_config.FC_DIMS_SHARED else shared_in
        policy_sizes = [shared_out, *model_config.POLICY_HEAD_DIMS]
        self.policy_head = nn.Sequential(
            _mlp(policy_sizes, activation), nn.Linear(policy_sizes[-1], env_config.ACTION_DIM)
        )
        value_sizes = [shared_out, *model_config.VALUE_HEAD_DIMS]
        self.value_head = nn.Sequential(
            _mlp(value_sizes, activation), nn.Linear(value_sizes[-1], 1)
        )

    def forward(
        self, grid: torch.Tensor, other_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.trunk(grid).flatten(1)
        shared = self.shared(torch.cat([features, other_features], dim=1))
        return self.policy_head(shared), self.value_head(shared).squeeze(1)
