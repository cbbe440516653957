"""The policy/value network as a torch module: alphatriangle 1.0.0's ``AlphaTriangleNet``.

The same layers in the same order under the same attribute names, so a 1.0.0 state dict
loads strictly and gives 1.0.0's outputs (``conv_body``, ``res_body``, ``input_proj``,
``pos_encoder``, ``transformer_body``, ``shared_fc``, ``policy_head``, ``value_head``). A
config whose layers cannot be built on the grid raises ValueError naming the fields. Cost:
one forward pass of one zero grid at construction, to size the flattened features.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from alphatriangle.config import EnvConfig, ModelConfig
from alphatriangle.config.model_config import KernelSize, Padding

__all__ = ["AlphaTriangleNet", "PositionalEncoding", "ResidualBlock", "conv_block"]

_MAX_POSITIONS = 5000  # 1.0.0's PositionalEncoding max_len: its buffer is in the state dict


def conv_block(
    in_channels: int,
    out_channels: int,
    kernel_size: KernelSize,
    stride: KernelSize,
    padding: Padding,
    *,
    use_batch_norm: bool,
    activation: type[nn.Module],
) -> nn.Sequential:
    """Convolution (no bias under batch norm), batch norm when asked, activation."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=not use_batch_norm)
    ]
    if use_batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(activation())
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    """``activation(x + bn2(conv2(conv1(x))))``, 3x3 convolutions of ``channels``."""

    def __init__(self, channels: int, use_batch_norm: bool, activation: type[nn.Module]) -> None:
        super().__init__()
        self.conv1 = conv_block(
            channels, channels, 3, 1, 1, use_batch_norm=use_batch_norm, activation=activation
        )
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=not use_batch_norm)
        self.bn2: nn.Module = nn.BatchNorm2d(channels) if use_batch_norm else nn.Identity()
        self.activation = activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.bn2(self.conv2(self.conv1(x)))
        return self.activation(out + x)  # type: ignore[no-any-return]


class PositionalEncoding(nn.Module):
    """Adds sinusoidal positions to (seq, batch, dim) inputs, then dropout 0.1. The table
    (``pe``, 5000 x 1 x dim) is a buffer, in the state dict as 1.0.0 saved it. An odd
    ``dim`` works (1.0.0 failed on it)."""

    def __init__(self, d_model: int, dropout: float = 0.1, max_len: int = _MAX_POSITIONS) -> None:
        super().__init__()
        self.dropout = nn.Dropout(p=dropout)
        position = torch.arange(max_len).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term[: d_model // 2])
        self.register_buffer("pe", pe.unsqueeze(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pe: torch.Tensor = self.pe  # type: ignore[assignment]
        return self.dropout(x + pe[: x.size(0)])  # type: ignore[no-any-return]


def _dense(
    in_features: int, sizes: list[int], batch_norm: bool, activation: type[nn.Module]
) -> tuple[list[nn.Module], int]:
    layers: list[nn.Module] = []
    for size in sizes:
        layers.append(nn.Linear(in_features, size))
        if batch_norm:
            layers.append(nn.BatchNorm1d(size))
        layers.append(activation())
        in_features = size
    return layers, in_features


class AlphaTriangleNet(nn.Module):
    """``model(grid, other_features) -> (policy_logits, value_logits)``: grid (N,
    GRID_INPUT_CHANNELS, ROWS, COLS) and other features (N, OTHER_NN_INPUT_FEATURES_DIM) in;
    policy logits (N, ACTION_DIM) and value-distribution logits (N, NUM_VALUE_ATOMS) out.
    See :class:`alphatriangle.config.ModelConfig` for the layers."""

    def __init__(self, model_config: ModelConfig, env_config: EnvConfig) -> None:
        super().__init__()
        self.model_config = model_config
        self.env_config = env_config
        self.action_dim = env_config.ACTION_DIM
        activation: type[nn.Module] = getattr(nn, model_config.ACTIVATION_FUNCTION)
        batch_norm = model_config.USE_BATCH_NORM

        conv_layers: list[nn.Module] = []
        channels = model_config.GRID_INPUT_CHANNELS
        for i, filters in enumerate(model_config.CONV_FILTERS):
            conv_layers.append(
                conv_block(
                    channels,
                    filters,
                    model_config.CONV_KERNEL_SIZES[i],
                    model_config.CONV_STRIDES[i],
                    model_config.CONV_PADDING[i],
                    use_batch_norm=batch_norm,
                    activation=activation,
                )
            )
            channels = filters
        self.conv_body = nn.Sequential(*conv_layers)

        res_layers: list[nn.Module] = []
        if model_config.NUM_RESIDUAL_BLOCKS > 0:
            if channels != model_config.RESIDUAL_BLOCK_FILTERS:
                res_layers.append(
                    conv_block(
                        channels,
                        model_config.RESIDUAL_BLOCK_FILTERS,
                        1,
                        1,
                        0,
                        use_batch_norm=batch_norm,
                        activation=activation,
                    )
                )
                channels = model_config.RESIDUAL_BLOCK_FILTERS
            res_layers += [
                ResidualBlock(channels, batch_norm, activation)
                for _ in range(model_config.NUM_RESIDUAL_BLOCKS)
            ]
        self.res_body = nn.Sequential(*res_layers)
        self.cnn_output_channels = channels

        self.input_proj: nn.Module = nn.Identity()
        self.pos_encoder: PositionalEncoding | None = None
        self.transformer_body: nn.TransformerEncoder | None = None
        if model_config.uses_transformer:
            dim = model_config.TRANSFORMER_DIM
            if channels != dim:
                self.input_proj = nn.Conv2d(channels, dim, kernel_size=1)
            self.pos_encoder = PositionalEncoding(dim, dropout=0.1)
            layer = nn.TransformerEncoderLayer(
                d_model=dim,
                nhead=model_config.TRANSFORMER_HEADS,
                dim_feedforward=model_config.TRANSFORMER_FC_DIM,
                activation=model_config.ACTIVATION_FUNCTION.lower(),
                batch_first=False,
                norm_first=True,
            )
            self.transformer_body = nn.TransformerEncoder(
                layer,
                num_layers=model_config.TRANSFORMER_LAYERS,
                norm=nn.LayerNorm(dim),
                enable_nested_tensor=False,  # not with norm_first; no effect on the math
            )

        flattened = self._flattened_size()
        shared, width = _dense(
            flattened + model_config.OTHER_NN_INPUT_FEATURES_DIM,
            model_config.FC_DIMS_SHARED,
            batch_norm,
            activation,
        )
        self.shared_fc = nn.Sequential(*shared)
        policy, policy_width = _dense(width, model_config.POLICY_HEAD_DIMS, batch_norm, activation)
        self.policy_head = nn.Sequential(*policy, nn.Linear(policy_width, self.action_dim))
        value, value_width = _dense(width, model_config.VALUE_HEAD_DIMS, batch_norm, activation)
        self.value_head = nn.Sequential(
            *value, nn.Linear(value_width, model_config.NUM_VALUE_ATOMS)
        )

    def _flattened_size(self) -> int:
        """Features per example after the convolutions (and the transformer); ValueError
        naming the fields when the grid does not survive the convolutions."""
        config, env = self.model_config, self.env_config
        grid = torch.zeros(1, config.GRID_INPUT_CHANNELS, env.ROWS, env.COLS)
        was_training = self.training
        self.eval()  # no batch-norm statistics from the zero grid
        try:
            with torch.no_grad():
                out = self.input_proj(self.res_body(self.conv_body(grid)))
        except RuntimeError as exc:
            raise ValueError(
                f"ModelConfig's convolutions (CONV_KERNEL_SIZES={config.CONV_KERNEL_SIZES}, "
                f"CONV_STRIDES={config.CONV_STRIDES}, CONV_PADDING={config.CONV_PADDING}) "
                f"do not fit the {env.ROWS} x {env.COLS} grid: {exc}"
            ) from exc
        finally:
            self.train(was_training)
        cells = out.shape[2] * out.shape[3]
        if self.pos_encoder is not None and cells > _MAX_POSITIONS:
            raise ValueError(
                f"the transformer sees {cells} cells ({out.shape[2]} x {out.shape[3]}), more "
                f"than its {_MAX_POSITIONS} positions: use strides (CONV_STRIDES) or "
                "USE_TRANSFORMER=False"
            )
        return int(out[0].numel())

    def forward(
        self, grid_state: torch.Tensor, other_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        res_out = self.res_body(self.conv_body(grid_state))
        if self.transformer_body is not None and self.pos_encoder is not None:
            projected = self.input_proj(res_out)  # (B, D, H, W)
            sequence = self.pos_encoder(projected.flatten(2).permute(2, 0, 1))  # (H*W, B, D)
            flattened = self.transformer_body(sequence).permute(1, 0, 2).flatten(1)
        else:
            flattened = res_out.reshape(res_out.size(0), -1)
        shared = self.shared_fc(torch.cat([flattened, other_features], dim=1))
        return self.policy_head(shared), self.value_head(shared)
