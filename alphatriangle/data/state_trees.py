"""A training state as the engine's state trees, and back into the schemas.

The DataManager saves two items per step: ``checkpoint`` (network, optimizer, scheduler, RNG
states, counters, stats, user data, as the fields of :class:`CheckpointData`) and ``buffer``
(the replay buffer's ``state_dict()``), each a tree tagged with its format and version.
Reading checks the tag before building a schema from a tree: a tree of another format or
version is a :class:`CheckpointCorruptError` naming where it was read. The parts are read
through :mod:`alphatriangle.data.parts`, which checks them.

Cost: building a tree references the live tensors and arrays (the engine's staging copies
them).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from alphatriangle.data.checkpoint import CheckpointCorruptError
from alphatriangle.data.parts import network_configs, network_model
from alphatriangle.data.rng_state import capture_rng_state
from alphatriangle.data.schemas import BufferData, CheckpointData

__all__ = [
    "BUFFER_ITEM",
    "CHECKPOINT_ITEM",
    "buffer_from_tree",
    "buffer_tree",
    "checkpoint_from_tree",
    "checkpoint_tree",
]

CHECKPOINT_ITEM = "checkpoint"
BUFFER_ITEM = "buffer"
_CHECKPOINT_FORMAT = "alphatriangle.CheckpointData"
_BUFFER_FORMAT = "alphatriangle.BufferData"


def checkpoint_tree(
    nn: Any,
    optimizer: Any,
    scheduler: Any,
    *,
    stats: Mapping[str, Any],
    counters: tuple[int, int, int],
    run_name: str,
    user_data: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The ``checkpoint`` item, of parts that :func:`~alphatriangle.data.parts.check_parts`
    accepted: ``stats`` is the stats' state, ``counters`` (global_step, episodes_played,
    total_simulations_run); the RNG states are captured here."""
    model_config, env_config = network_configs(nn)
    global_step, episodes_played, total_simulations_run = counters
    return {
        "format": _CHECKPOINT_FORMAT,
        "version": 1,
        "fields": {
            "run_name": run_name,
            "global_step": global_step,
            "episodes_played": episodes_played,
            "total_simulations_run": total_simulations_run,
            "model_config_dict": model_config,
            "env_config_dict": env_config,
            "model_state_dict": dict(network_model(nn, "save_training_state").state_dict()),
            "optimizer_state_dict": optimizer.state_dict(),
            "stats_collector_state": dict(stats),
            "scheduler_state_dict": None if scheduler is None else scheduler.state_dict(),
            "rng_state": capture_rng_state(),
            "user_data": dict(user_data or {}),
        },
    }


def buffer_tree(buffer: Any) -> dict[str, Any]:
    """The ``buffer`` item: the replay buffer's ``state_dict()``."""
    return {"format": _BUFFER_FORMAT, "version": 1, "buffer_state": buffer.state_dict()}


def _checked(tree: Mapping[str, Any], tag: str, what: str, where: Path) -> Mapping[str, Any]:
    if tree.get("format") != tag or tree.get("version") != 1:
        raise CheckpointCorruptError(f"{where} holds no alphatriangle {what}", path=where)
    return tree


def checkpoint_from_tree(tree: Mapping[str, Any], where: Path) -> CheckpointData:
    """The :class:`CheckpointData` of a ``checkpoint`` item read from ``where``."""
    fields = _checked(tree, _CHECKPOINT_FORMAT, "checkpoint", where)["fields"]
    return CheckpointData.model_validate(fields)


def buffer_from_tree(tree: Mapping[str, Any], where: Path) -> BufferData:
    """The :class:`BufferData` of a ``buffer`` item read from ``where``."""
    return BufferData(buffer_state=_checked(tree, _BUFFER_FORMAT, "buffer", where)["buffer_state"])
