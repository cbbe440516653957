"""Training: the learner's optimisation and the replay buffer it samples from."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from alphatriangle.config.persistence_config import check_run_name

__all__ = ["TrainConfig"]


class TrainConfig(BaseModel):
    """The learner and its replay buffer (1.0.0 field names).

    Buffer: ``BUFFER_CAPACITY`` experiences in a ring; training starts once
    ``MIN_BUFFER_SIZE_TO_TRAIN`` are in; batches of ``BATCH_SIZE``. Prioritised replay
    (``USE_PER``): priority ``(|td error| + PER_EPSILON) ** PER_ALPHA``, importance weights
    with beta annealed linearly from ``PER_BETA_INITIAL`` to ``PER_BETA_FINAL`` over
    ``PER_BETA_ANNEAL_STEPS`` training steps. Self-play: ``NUM_SELF_PLAY_WORKERS`` Ray
    workers, sent the learner's weights every ``WORKER_UPDATE_FREQ_STEPS`` steps."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    RUN_NAME: str = Field(default_factory=lambda: dt.datetime.now().strftime("train_%Y%m%d_%H%M%S"))
    LOAD_CHECKPOINT_PATH: str | None = None
    LOAD_BUFFER_PATH: str | None = None
    AUTO_RESUME_LATEST: bool = True
    CHECKPOINT_SAVE_FREQ_STEPS: int = Field(default=100, ge=1)
    CHECKPOINT_SAVE_FREQ_SECONDS: float | None = Field(default=None, gt=0)

    DEVICE: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    RANDOM_SEED: int = Field(default=42, ge=0)
    MAX_TRAINING_STEPS: int | None = Field(default=None, ge=1)
    BATCH_SIZE: int = Field(default=64, ge=1)
    LEARNING_RATE: float = Field(default=1e-3, gt=0.0, le=10.0)
    WEIGHT_DECAY: float = Field(default=1e-4, ge=0.0, le=1.0)
    GRADIENT_CLIP_VALUE: float | None = Field(default=5.0, gt=0.0)
    VALUE_LOSS_WEIGHT: float = Field(default=1.0, ge=0.0)

    BUFFER_CAPACITY: int = Field(default=100_000, ge=1, le=100_000_000)
    MIN_BUFFER_SIZE_TO_TRAIN: int = Field(default=1_000, ge=1)
    USE_PER: bool = True
    PER_ALPHA: float = Field(default=0.6, ge=0.0, le=1.0)
    PER_BETA_INITIAL: float = Field(default=0.4, ge=0.0, le=1.0)
    PER_BETA_FINAL: float = Field(default=1.0, ge=0.0, le=1.0)
    PER_BETA_ANNEAL_STEPS: int | None = Field(default=None, ge=1)
    PER_EPSILON: float = Field(default=1e-5, gt=0.0, le=1.0)
    # Self-play (1.0.0's names): workers, and how often they get the learner's weights.
    NUM_SELF_PLAY_WORKERS: int = Field(default=2, ge=1, le=1024)
    WORKER_UPDATE_FREQ_STEPS: int = Field(default=10, ge=1)

    @field_validator("RUN_NAME")
    @classmethod
    def _safe_run_name(cls, value: str) -> str:
        return check_run_name(value)

    @field_validator("LOAD_CHECKPOINT_PATH", "LOAD_BUFFER_PATH")
    @classmethod
    def _existing_path(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).exists():
            raise ValueError(f"{value} does not exist")
        return value

    @model_validator(mode="after")
    def _check_buffer(self) -> TrainConfig:
        if self.BATCH_SIZE > self.BUFFER_CAPACITY:
            raise ValueError(
                f"BATCH_SIZE ({self.BATCH_SIZE}) is larger than BUFFER_CAPACITY "
                f"({self.BUFFER_CAPACITY}): no batch could ever be drawn"
            )
        if self.MIN_BUFFER_SIZE_TO_TRAIN > self.BUFFER_CAPACITY:
            raise ValueError(
                f"MIN_BUFFER_SIZE_TO_TRAIN ({self.MIN_BUFFER_SIZE_TO_TRAIN}) is larger than "
                f"BUFFER_CAPACITY ({self.BUFFER_CAPACITY}): training would never start"
            )
        return self

    @property
    def per_beta_anneal_steps(self) -> int:
        """Steps over which beta anneals: ``PER_BETA_ANNEAL_STEPS``, else
        ``MAX_TRAINING_STEPS``, else 100,000."""
        return self.PER_BETA_ANNEAL_STEPS or self.MAX_TRAINING_STEPS or 100_000
