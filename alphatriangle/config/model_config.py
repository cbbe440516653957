"""The policy/value network's architecture: alphatriangle 1.0.0's ``ModelConfig``, its field
names, types and defaults; a 1.0.0 ``configs.json`` section or a checkpoint's
``model_config_dict`` constructs it unchanged."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from alphatriangle.config.base import ConfigBase

__all__ = ["ModelConfig"]

KernelSize = int | tuple[int, int]
Padding = int | tuple[int, int] | str


class ModelConfig(ConfigBase):
    """The network :class:`alphatriangle.nn.AlphaTriangleNet` builds, in this order:

    1. the grid (``GRID_INPUT_CHANNELS`` x ROWS x COLS) through one convolution per entry of
       ``CONV_FILTERS`` (kernel ``CONV_KERNEL_SIZES``, stride ``CONV_STRIDES``, padding
       ``CONV_PADDING``; each with batch norm when ``USE_BATCH_NORM``, then the activation);
    2. ``NUM_RESIDUAL_BLOCKS`` residual blocks of ``RESIDUAL_BLOCK_FILTERS`` channels (a 1x1
       convolution first when the last convolution has another width);
    3. when ``USE_TRANSFORMER`` and ``TRANSFORMER_LAYERS > 0``: a 1x1 projection to
       ``TRANSFORMER_DIM`` (when the width differs), sinusoidal positions, and
       ``TRANSFORMER_LAYERS`` pre-norm encoder layers (``TRANSFORMER_HEADS`` heads,
       feed-forward ``TRANSFORMER_FC_DIM``) over the ROWS*COLS cells;
    4. the flattened features joined with the ``OTHER_NN_INPUT_FEATURES_DIM`` other features,
       through the ``FC_DIMS_SHARED`` layers;
    5. a policy head (``POLICY_HEAD_DIMS``, then one logit per action) and a distributional
       value head (``VALUE_HEAD_DIMS``, then ``NUM_VALUE_ATOMS`` logits over atoms evenly
       spaced on ``[VALUE_MIN, VALUE_MAX]``: C51).

    The defaults are 1.0.0's (about 3M parameters). One difference from 1.0.0, a convenience:
    ``CONV_STRIDES`` and ``CONV_PADDING``, when not given, follow ``CONV_FILTERS`` (stride 1,
    padding ``kernel // 2``), so ``CONV_FILTERS=[16]`` with ``CONV_KERNEL_SIZES=[3]`` is a
    valid config (1.0.0 asked for all four lists); with three layers of kernel 3 that is
    1.0.0's default exactly. ``TRANSFORMER_DIM`` may be odd (1.0.0's positional encoding
    failed on it). An activation the transformer cannot take (it takes ReLU or GELU) is
    refused when the transformer is on (1.0.0 failed when building the network)."""

    GRID_INPUT_CHANNELS: int = Field(default=1, gt=0, le=1024)

    CONV_FILTERS: list[int] = Field(default_factory=lambda: [32, 64, 128])
    CONV_KERNEL_SIZES: list[KernelSize] = Field(default_factory=lambda: list[KernelSize]([3, 3, 3]))
    CONV_STRIDES: list[KernelSize] = Field(default_factory=lambda: list[KernelSize]([1, 1, 1]))
    CONV_PADDING: list[Padding] = Field(default_factory=lambda: list[Padding]([1, 1, 1]))

    NUM_RESIDUAL_BLOCKS: int = Field(default=2, ge=0, le=256)
    RESIDUAL_BLOCK_FILTERS: int = Field(default=128, gt=0)

    USE_TRANSFORMER: bool = True
    TRANSFORMER_DIM: int = Field(default=128, gt=0)
    TRANSFORMER_HEADS: int = Field(default=4, gt=0)
    TRANSFORMER_LAYERS: int = Field(default=2, ge=0, le=256)
    TRANSFORMER_FC_DIM: int = Field(default=256, gt=0)

    FC_DIMS_SHARED: list[int] = Field(default_factory=lambda: [128])
    POLICY_HEAD_DIMS: list[int] = Field(default_factory=lambda: [128])

    NUM_VALUE_ATOMS: int = Field(default=51, gt=1)
    VALUE_MIN: float = -10.0
    VALUE_MAX: float = 10.0
    VALUE_HEAD_DIMS: list[int] = Field(default_factory=lambda: [128])

    ACTIVATION_FUNCTION: Literal["ReLU", "GELU", "SiLU", "Tanh", "Sigmoid"] = "ReLU"
    USE_BATCH_NORM: bool = True

    OTHER_NN_INPUT_FEATURES_DIM: int = Field(default=30, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _conv_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "CONV_FILTERS" not in data:
            return data
        layers = len(data["CONV_FILTERS"]) if isinstance(data["CONV_FILTERS"], list) else None
        kernels = data.get("CONV_KERNEL_SIZES", [3, 3, 3])
        if layers is None or not isinstance(kernels, list) or len(kernels) != layers:
            return data  # the checks below name what is wrong
        data = dict(data)
        data.setdefault("CONV_STRIDES", [1] * layers)
        if "CONV_PADDING" not in data:
            data["CONV_PADDING"] = [
                (k[0] // 2, k[1] // 2) if isinstance(k, list | tuple) else k // 2 for k in kernels
            ]
        return data

    def check(self) -> None:
        layers = len(self.CONV_FILTERS)
        for name in ("CONV_KERNEL_SIZES", "CONV_STRIDES", "CONV_PADDING"):
            if len(getattr(self, name)) != layers:
                raise ValueError(
                    f"{name} has {len(getattr(self, name))} entries, CONV_FILTERS {layers}: "
                    "one per convolution"
                )
        for name in ("CONV_FILTERS", "FC_DIMS_SHARED", "POLICY_HEAD_DIMS", "VALUE_HEAD_DIMS"):
            if any(size < 1 for size in getattr(self, name)):
                raise ValueError(f"{name} sizes must be >= 1, got {getattr(self, name)}")
        for name in ("CONV_KERNEL_SIZES", "CONV_STRIDES"):
            for value in getattr(self, name):
                if min(value if isinstance(value, tuple) else (value,)) < 1:
                    raise ValueError(f"{name} entries must be >= 1, got {getattr(self, name)}")
        for i, padding in enumerate(self.CONV_PADDING):
            if isinstance(padding, str):
                if padding not in ("same", "valid"):
                    raise ValueError(
                        f"CONV_PADDING[{i}] is {padding!r}: a string padding is 'same' or 'valid'"
                    )
                if padding == "same" and self.CONV_STRIDES[i] not in (1, (1, 1)):
                    raise ValueError(
                        f"CONV_PADDING[{i}] is 'same' with CONV_STRIDES[{i}]="
                        f"{self.CONV_STRIDES[i]}: 'same' padding needs stride 1"
                    )
            elif min(padding if isinstance(padding, tuple) else (padding,)) < 0:
                raise ValueError(f"CONV_PADDING entries must be >= 0, got {self.CONV_PADDING}")
        if self.VALUE_MIN >= self.VALUE_MAX:
            raise ValueError(
                f"VALUE_MIN ({self.VALUE_MIN}) must be strictly less than VALUE_MAX "
                f"({self.VALUE_MAX})"
            )
        if self.uses_transformer:
            if self.TRANSFORMER_DIM % self.TRANSFORMER_HEADS:
                raise ValueError(
                    f"TRANSFORMER_DIM ({self.TRANSFORMER_DIM}) must be divisible by "
                    f"TRANSFORMER_HEADS ({self.TRANSFORMER_HEADS})"
                )
            if self.ACTIVATION_FUNCTION not in ("ReLU", "GELU"):
                raise ValueError(
                    f"ACTIVATION_FUNCTION {self.ACTIVATION_FUNCTION} cannot drive the "
                    "transformer (ReLU or GELU), and USE_TRANSFORMER is on with "
                    f"TRANSFORMER_LAYERS={self.TRANSFORMER_LAYERS}"
                )

    @property
    def uses_transformer(self) -> bool:
        """Whether the network has the transformer (``USE_TRANSFORMER`` and layers)."""
        return self.USE_TRANSFORMER and self.TRANSFORMER_LAYERS > 0
