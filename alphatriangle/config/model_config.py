"""The policy/value network's sizes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["ModelConfig"]


class ModelConfig(BaseModel):
    """A convolutional trunk over the grid (``CONV_FILTERS``, one kernel size each, then
    ``NUM_RESIDUAL_BLOCKS`` residual blocks), the flattened trunk joined with the other
    features, shared fully connected layers, then a policy head (logits over the actions) and
    a value head (one scalar). The defaults make a small network for the 1.0.0 shapes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    GRID_INPUT_CHANNELS: int = Field(default=2, ge=1, le=64)
    OTHER_NN_INPUT_FEATURES_DIM: int = Field(default=30, ge=0, le=100_000)
    CONV_FILTERS: list[int] = Field(default_factory=lambda: [32, 32])
    CONV_KERNEL_SIZES: list[int] = Field(default_factory=lambda: [3, 3])
    NUM_RESIDUAL_BLOCKS: int = Field(default=0, ge=0, le=64)
    FC_DIMS_SHARED: list[int] = Field(default_factory=lambda: [128])
    POLICY_HEAD_DIMS: list[int] = Field(default_factory=list)
    VALUE_HEAD_DIMS: list[int] = Field(default_factory=lambda: [64])
    ACTIVATION_FUNCTION: Literal["ReLU", "GELU", "SiLU", "Tanh"] = "ReLU"
    USE_BATCH_NORM: bool = False

    @model_validator(mode="after")
    def _check_layers(self) -> ModelConfig:
        if not self.CONV_FILTERS:
            raise ValueError("CONV_FILTERS must name at least one convolution")
        if len(self.CONV_KERNEL_SIZES) != len(self.CONV_FILTERS):
            raise ValueError(
                f"CONV_KERNEL_SIZES has {len(self.CONV_KERNEL_SIZES)} entries, CONV_FILTERS "
                f"{len(self.CONV_FILTERS)}: one kernel size per convolution"
            )
        for name in ("CONV_FILTERS", "FC_DIMS_SHARED", "POLICY_HEAD_DIMS", "VALUE_HEAD_DIMS"):
            if any(size < 1 for size in getattr(self, name)):
                raise ValueError(f"{name} sizes must be >= 1, got {getattr(self, name)}")
        if any(k < 1 or k % 2 == 0 for k in self.CONV_KERNEL_SIZES):
            raise ValueError(
                f"CONV_KERNEL_SIZES must be odd and >= 1 (same padding), "
                f"got {self.CONV_KERNEL_SIZES}"
            )
        return self
