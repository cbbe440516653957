"""Training: the learner's optimisation, its schedule and the replay buffer it samples from;
alphatriangle 1.0.0's ``TrainConfig`` (its field names, types and defaults) with a few
fields of ours. A 1.0.0 ``configs.json`` section constructs it unchanged."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from alphatriangle.config.base import ConfigBase
from alphatriangle.config.persistence_config import RunName

__all__ = ["TrainConfig"]

Device = Literal["auto", "cuda", "cpu", "mps"]


class TrainConfig(ConfigBase):
    """The learner and its replay buffer.

    Loss: ``POLICY_LOSS_WEIGHT * policy cross-entropy + VALUE_LOSS_WEIGHT * value
    cross-entropy`` (the value target projected onto the C51 atoms) ``- ENTROPY_BONUS_WEIGHT *
    policy entropy``, each example weighted by its importance weight; gradients clipped to
    norm ``GRADIENT_CLIP_VALUE``. Optimiser ``OPTIMIZER_TYPE`` (Adam, AdamW, or SGD with
    momentum 0.9) at ``LEARNING_RATE`` with ``WEIGHT_DECAY``; learning-rate schedule
    ``LR_SCHEDULER_TYPE``, stepped once per training step: ``CosineAnnealingLR`` over
    ``LR_SCHEDULER_T_MAX`` steps (``MAX_TRAINING_STEPS`` when unset) down to
    ``LR_SCHEDULER_ETA_MIN``; ``StepLR`` multiplying by ``LR_SCHEDULER_GAMMA`` every
    ``LR_SCHEDULER_STEP_SIZE`` steps (1.0.0 read these two with the same defaults, without
    declaring them); ``None``: constant.

    Buffer: ``BUFFER_CAPACITY`` experiences in a ring; training starts once
    ``MIN_BUFFER_SIZE_TO_TRAIN`` are in; batches of ``BATCH_SIZE``. Prioritised replay
    (``USE_PER``): priority ``(|td error| + PER_EPSILON) ** PER_ALPHA``, importance weights
    with beta annealed linearly from ``PER_BETA_INITIAL`` to ``PER_BETA_FINAL`` over
    ``PER_BETA_ANNEAL_STEPS`` training steps (``MAX_TRAINING_STEPS`` when unset). Self-play:
    ``NUM_SELF_PLAY_WORKERS`` Ray workers, sent the learner's weights every
    ``WORKER_UPDATE_FREQ_STEPS`` steps. Checkpoints every ``CHECKPOINT_SAVE_FREQ_STEPS``
    steps or, ours, ``CHECKPOINT_SAVE_FREQ_SECONDS``.

    1.0.0 filled ``LR_SCHEDULER_T_MAX`` and ``PER_BETA_ANNEAL_STEPS`` in from
    ``MAX_TRAINING_STEPS`` on construction; here they stay unset and
    :attr:`lr_scheduler_t_max` / :attr:`per_beta_anneal_steps` resolve them when used, so a
    changed ``MAX_TRAINING_STEPS`` carries through.

    Accepted, not acted on (a non-default value warns): ``WORKER_DEVICE`` (self-play workers
    run on the CPU), ``N_STEP_RETURNS`` and ``GAMMA`` (the value target is the discounted
    return of the rest of the game, discounted by ``MCTSConfig.DISCOUNT``), ``COMPILE_MODEL``
    (the network runs eagerly)."""

    ignored_fields: ClassVar[dict[str, str]] = {
        "WORKER_DEVICE": "self-play workers run on the CPU",
        "N_STEP_RETURNS": "the value target is the discounted return of the rest of the game",
        "GAMMA": "the value target is discounted by MCTSConfig.DISCOUNT",
        "COMPILE_MODEL": "the network runs eagerly (no torch.compile)",
    }

    RUN_NAME: RunName = Field(
        default_factory=lambda: dt.datetime.now().strftime("train_%Y%m%d_%H%M%S")
    )
    LOAD_CHECKPOINT_PATH: str | None = None
    LOAD_BUFFER_PATH: str | None = None
    AUTO_RESUME_LATEST: bool = True
    DEVICE: Device = "auto"
    RANDOM_SEED: int = Field(default=42, ge=0)

    MAX_TRAINING_STEPS: int | None = Field(default=100_000, ge=1)

    NUM_SELF_PLAY_WORKERS: int = Field(default=8, ge=1, le=1024)
    WORKER_DEVICE: Device = "cpu"
    BATCH_SIZE: int = Field(default=128, ge=1)
    BUFFER_CAPACITY: int = Field(default=200_000, ge=1, le=100_000_000)
    MIN_BUFFER_SIZE_TO_TRAIN: int = Field(default=20_000, ge=1)
    WORKER_UPDATE_FREQ_STEPS: int = Field(default=500, ge=1)

    N_STEP_RETURNS: int = Field(default=5, ge=1)
    GAMMA: float = Field(default=0.99, gt=0.0, le=1.0)

    OPTIMIZER_TYPE: Literal["Adam", "AdamW", "SGD"] = "AdamW"
    LEARNING_RATE: float = Field(default=2e-4, gt=0.0, le=10.0)
    WEIGHT_DECAY: float = Field(default=1e-4, ge=0.0, le=1.0)
    GRADIENT_CLIP_VALUE: float | None = Field(default=1.0, gt=0.0)

    LR_SCHEDULER_TYPE: Literal["StepLR", "CosineAnnealingLR"] | None = "CosineAnnealingLR"
    LR_SCHEDULER_T_MAX: int | None = Field(default=None, ge=1)
    LR_SCHEDULER_ETA_MIN: float = Field(default=1e-6, ge=0.0)
    LR_SCHEDULER_STEP_SIZE: int = Field(default=100_000, ge=1)
    LR_SCHEDULER_GAMMA: float = Field(default=0.1, gt=0.0)

    POLICY_LOSS_WEIGHT: float = Field(default=1.0, ge=0.0)
    VALUE_LOSS_WEIGHT: float = Field(default=1.0, ge=0.0)
    ENTROPY_BONUS_WEIGHT: float = Field(default=0.001, ge=0.0)

    CHECKPOINT_SAVE_FREQ_STEPS: int = Field(default=2500, ge=1)
    CHECKPOINT_SAVE_FREQ_SECONDS: float | None = Field(default=None, gt=0)

    USE_PER: bool = True
    PER_ALPHA: float = Field(default=0.6, ge=0.0, le=1.0)
    PER_BETA_INITIAL: float = Field(default=0.4, ge=0.0, le=1.0)
    PER_BETA_FINAL: float = Field(default=1.0, ge=0.0, le=1.0)
    PER_BETA_ANNEAL_STEPS: int | None = Field(default=None, ge=1)
    PER_EPSILON: float = Field(default=1e-5, gt=0.0, le=1.0)

    COMPILE_MODEL: bool = True

    @field_validator("LOAD_CHECKPOINT_PATH", "LOAD_BUFFER_PATH")
    @classmethod
    def _existing_path(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).exists():
            raise ValueError(f"{value} does not exist")
        return value

    def check(self) -> None:
        for low, high, message in (
            (
                "BATCH_SIZE",
                "BUFFER_CAPACITY",
                "{BATCH_SIZE} is larger than {BUFFER_CAPACITY}: no batch could ever be drawn",
            ),
            (
                "MIN_BUFFER_SIZE_TO_TRAIN",
                "BUFFER_CAPACITY",
                "{MIN_BUFFER_SIZE_TO_TRAIN} is larger than {BUFFER_CAPACITY}: "
                "training would never start",
            ),
            (
                "PER_BETA_INITIAL",
                "PER_BETA_FINAL",
                "{PER_BETA_FINAL} cannot be less than {PER_BETA_INITIAL}",
            ),
        ):
            self.check_at_most(low, high, message)

    def _or_run_length(self, steps: int | None) -> int:
        """``steps``, else ``MAX_TRAINING_STEPS``, else 100,000 (1.0.0's fallback)."""
        return steps or self.MAX_TRAINING_STEPS or 100_000

    @property
    def per_beta_anneal_steps(self) -> int:
        """Steps over which beta anneals: ``PER_BETA_ANNEAL_STEPS`` or the run's length."""
        return self._or_run_length(self.PER_BETA_ANNEAL_STEPS)

    @property
    def lr_scheduler_t_max(self) -> int:
        """The cosine schedule's period: ``LR_SCHEDULER_T_MAX`` or the run's length."""
        return self._or_run_length(self.LR_SCHEDULER_T_MAX)
