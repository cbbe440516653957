"""Resuming with a checkpoint's own configs: the network, the game and the optimizer as the
run that wrote the checkpoint had them (a run of ours or of alphatriangle 1.0.0), whatever
the configs of the run that resumes say; and, when its weights cannot fit the network its
configs describe, an error naming the config field (``NeuralNetwork.check_weights``; never
torch's raw state-dict mismatch).

What comes from where: ``ModelConfig`` and ``EnvConfig`` from the checkpoint
(``model_config_dict``, ``env_config_dict``); the optimizer's fields (:data:`OPTIMIZER_FIELDS`)
from the ``TrainConfig`` of the run's ``configs.json`` when it has one, else
``OPTIMIZER_TYPE`` as the saved optimizer state shows it; everything else (steps, batch,
buffer, workers, search, persistence) from the resuming run's configs.

Cost: one small JSON file read and a comparison of the state dict's shapes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ValidationError

from alphatriangle.config import EnvConfig, ModelConfig, RunConfigs, TrainConfig

__all__ = [
    "OPTIMIZER_FIELDS",
    "configs_of_checkpoint",
    "optimizer_type_of",
    "position_scheduler",
]

logger = logging.getLogger(__name__)

OPTIMIZER_FIELDS = (
    "OPTIMIZER_TYPE",
    "LEARNING_RATE",
    "WEIGHT_DECAY",
    "LR_SCHEDULER_TYPE",
    "LR_SCHEDULER_T_MAX",
    "LR_SCHEDULER_ETA_MIN",
    "LR_SCHEDULER_STEP_SIZE",
    "LR_SCHEDULER_GAMMA",
)


def _fields_of(config: BaseModel) -> dict[str, Any]:
    return {name: getattr(config, name) for name in type(config).model_fields}


def _build(cls: type[BaseModel], values: Mapping[str, Any], what: str) -> Any:
    try:
        return cls.model_validate(dict(values))
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            message = str(error["msg"]).removeprefix("Value error, ")
            field = ".".join(str(part) for part in error["loc"])
            problems.append(f"{field}: {message}" if field else message)
        raise ValueError(f"{what} cannot build a {cls.__name__}: {'; '.join(problems)}") from exc


def optimizer_type_of(state: Mapping[str, Any]) -> str | None:
    """``"SGD"``, ``"Adam"`` or ``"AdamW"`` as a saved optimizer state shows it; None when
    it cannot tell (Adam and AdamW look alike in states of torch before 2.6)."""
    groups = state.get("param_groups") or []
    if not groups:
        return None
    group = groups[0]
    if "betas" not in group:
        return "SGD" if "momentum" in group else None
    if "decoupled_weight_decay" in group:
        return "AdamW" if group["decoupled_weight_decay"] else "Adam"
    return None


def _saved_train_fields(run_config_file: Path | None) -> dict[str, Any]:
    """The optimizer fields of the ``TrainConfig`` section of a run's ``configs.json``
    (empty when there is no such file or section)."""
    if run_config_file is None or not run_config_file.is_file():
        return {}
    try:
        saved = json.loads(run_config_file.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the run's config file {run_config_file}: {exc}") from exc
    section = saved.get("TrainConfig", saved.get("train")) if isinstance(saved, dict) else None
    if not isinstance(section, dict):
        return {}
    return {name: section[name] for name in OPTIMIZER_FIELDS if name in section}


def configs_of_checkpoint(
    configs: RunConfigs, checkpoint: Any, run_config_file: Path | None
) -> tuple[RunConfigs, list[str]]:
    """``configs`` with the model, the game and the optimizer the checkpoint was written
    with (see the module docstring), and the names of the fields that this changed.
    ValueError naming the field when the checkpoint's configs cannot be built."""
    where = f"the checkpoint of run {checkpoint.run_name} at step {checkpoint.global_step}"
    model = _build(ModelConfig, checkpoint.model_config_dict, f"{where}: its model_config_dict")
    env = _build(EnvConfig, checkpoint.env_config_dict, f"{where}: its env_config_dict")
    optimizer = _saved_train_fields(run_config_file)
    if "OPTIMIZER_TYPE" not in optimizer:
        seen = optimizer_type_of(checkpoint.optimizer_state_dict)
        if seen is not None:
            optimizer["OPTIMIZER_TYPE"] = seen
    train = _build(
        TrainConfig,
        {**_fields_of(configs.train), **optimizer},
        f"{where}: the optimizer fields of {run_config_file}",
    )
    changed = [
        f"{type(old).__name__}.{name}"
        for old, new in ((configs.model, model), (configs.env, env), (configs.train, train))
        for name in type(old).model_fields
        if getattr(old, name) != getattr(new, name)
    ]
    resumed = configs.model_copy(update={"model": model, "env": env, "train": train})
    return resumed, changed


def position_scheduler(scheduler: Any, optimizer: torch.optim.Optimizer, step: int) -> None:
    """Put a learning-rate scheduler built fresh at ``step``, for a checkpoint without a
    scheduler state (1.0.0 saved none): the optimizer state already holds the learning rate
    of that step, so the schedule goes on from there (both of 1.0.0's schedulers compute
    the next rate from the current one)."""
    scheduler.last_epoch = step
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
