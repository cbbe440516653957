"""The parts of a training state as the engine's state trees, and back.

The DataManager saves two items per step: ``checkpoint`` (network, optimizer, scheduler, RNG
states, counters, stats, user data, as the fields of :class:`CheckpointData`) and ``buffer``
(the replay buffer's ``state_dict()``), each a tree tagged with its format and version, which
reading checks before building a schema from it. The parts are taken as users hand them: the
network as 1.0.0's ``NeuralNetwork`` (``.model`` and its configs) or any ``torch.nn.Module``;
the stats as a Ray actor handle, a plain ``StatsCollector`` or None; anything else is a
``TypeError`` naming the parameter, before anything is saved. Also here: the run's
configuration as strict JSON (``TypeError`` naming the key of a value JSON cannot hold).

Cost: building a tree references the live tensors and arrays (the engine's staging copies
them); the stats actor's state is one bounded remote call.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel

from alphatriangle.data.checkpoint import CheckpointCorruptError
from alphatriangle.data.schemas import BufferData, CheckpointData

__all__ = [
    "BUFFER_ITEM",
    "CHECKPOINT_ITEM",
    "buffer_from_tree",
    "buffer_tree",
    "capture_rng_state",
    "check_parts",
    "checkpoint_from_tree",
    "checkpoint_tree",
    "load_network_weights",
    "put_stats_state",
    "restore_rng_state",
    "run_config_json",
]

CHECKPOINT_ITEM = "checkpoint"
BUFFER_ITEM = "buffer"
_CHECKPOINT_FORMAT = "alphatriangle.CheckpointData"
_BUFFER_FORMAT = "alphatriangle.BufferData"


def capture_rng_state() -> dict[str, Any]:
    """The RNG states of Python, NumPy (global), torch CPU and every CUDA device."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("torch_cuda") or []
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


# -- the parts, as users pass them ---------------------------------------------------------


def _config_dict(config: Any, what: str) -> dict[str, Any]:
    """A config as plain data: a pydantic model's fields (not its computed ones), a mapping
    as a dict, None as {}."""
    if config is None:
        return {}
    if isinstance(config, BaseModel):
        return {name: getattr(config, name) for name in type(config).model_fields}
    if isinstance(config, Mapping):
        return dict(config)
    raise TypeError(f"nn.{what} is a {type(config).__name__}: expected a pydantic config or None")


def _network_model(nn: Any, caller: str) -> torch.nn.Module:
    """The Module holding the weights of ``nn``: ``nn`` itself, or 1.0.0's
    ``NeuralNetwork.model``; TypeError naming ``caller``'s parameter otherwise."""
    if isinstance(nn, torch.nn.Module):
        return nn
    model = getattr(nn, "model", None)
    if isinstance(model, torch.nn.Module):
        return model
    raise TypeError(
        f"{caller}: nn is a {type(nn).__name__}: expected alphatriangle's NeuralNetwork "
        "(with .model) or a torch.nn.Module"
    )


def load_network_weights(nn: Any, weights: Mapping[str, Any]) -> None:
    """Put saved weights into ``nn`` (a NeuralNetwork or a torch.nn.Module)."""
    model = _network_model(nn, "apply_loaded_state")
    if model is not nn and callable(getattr(nn, "set_weights", None)):
        nn.set_weights(weights)  # the network's own way (devices, compiled models)
    else:
        model.load_state_dict(weights)


def _is_actor(stats: Any) -> bool:
    """A Ray actor handle: its methods are called through ``.remote``."""
    return callable(getattr(getattr(stats, "get_state", None), "remote", None))


def _check_stats(stats: Any, parameter: str) -> None:
    if stats is None or _is_actor(stats) or callable(getattr(stats, "get_state", None)):
        return
    raise TypeError(
        f"{parameter} is a {type(stats).__name__}: expected a StatsCollectorActor handle, "
        "a StatsCollector, or None"
    )


def _stats_state(stats: Any, timeout_s: float) -> dict[str, Any]:
    if stats is None:
        return {}
    if _is_actor(stats):
        from alphatriangle.stats import fetch_actor_state

        return fetch_actor_state(stats, timeout_s) or {}
    return dict(stats.get_state())


def put_stats_state(stats: Any, state: Mapping[str, Any]) -> None:
    """Give a saved stats state back to a Ray actor handle or a plain StatsCollector."""
    _check_stats(stats, "stats_collector_actor")
    if _is_actor(stats):
        import ray

        ray.get(stats.set_state.remote(dict(state)), timeout=60)
    elif stats is not None:
        stats.set_state(state)


# -- trees ----------------------------------------------------------------------------------


def check_parts(*, nn: Any, optimizer: Any, stats: Any, buffer: Any, scheduler: Any) -> None:
    """TypeError naming the parameter of ``save_training_state`` that a part does not fit
    (checked at every call, whether or not anything is due)."""
    _network_model(nn, "save_training_state")
    _check_stats(stats, "save_training_state: stats_collector_actor")
    for name, part in (("optimizer", optimizer), ("scheduler", scheduler), ("buffer", buffer)):
        if (part is not None or name == "optimizer") and not callable(
            getattr(part, "state_dict", None)
        ):
            raise TypeError(
                f"save_training_state: {name} is a {type(part).__name__}, which has no state_dict()"
            )


def checkpoint_tree(
    *,
    run_name: str,
    nn: Any,
    optimizer: Any,
    stats_collector_actor: Any,
    stats_timeout_s: float,
    scheduler: Any,
    user_data: Mapping[str, Any] | None,
    global_step: int,
    episodes_played: int,
    total_simulations_run: int,
) -> dict[str, Any]:
    """The ``checkpoint`` item, of parts that :func:`check_parts` accepted."""
    model = _network_model(nn, "save_training_state")
    configs = (
        (None, None)
        if model is nn
        else (getattr(nn, "model_config", None), getattr(nn, "env_config", None))
    )
    return {
        "format": _CHECKPOINT_FORMAT,
        "version": 1,
        "fields": {
            "run_name": run_name,
            "global_step": global_step,
            "episodes_played": episodes_played,
            "total_simulations_run": total_simulations_run,
            "model_config_dict": _config_dict(configs[0], "model_config"),
            "env_config_dict": _config_dict(configs[1], "env_config"),
            "model_state_dict": dict(model.state_dict()),
            "optimizer_state_dict": optimizer.state_dict(),
            "stats_collector_state": _stats_state(stats_collector_actor, stats_timeout_s),
            "scheduler_state_dict": None if scheduler is None else scheduler.state_dict(),
            "rng_state": capture_rng_state(),
            "user_data": dict(user_data or {}),
        },
    }


def buffer_tree(buffer: Any) -> dict[str, Any]:
    """The ``buffer`` item: the replay buffer's ``state_dict()``."""
    return {"format": _BUFFER_FORMAT, "version": 1, "buffer_state": buffer.state_dict()}


def checkpoint_from_tree(tree: Mapping[str, Any], where: Path) -> CheckpointData:
    if tree.get("format") != _CHECKPOINT_FORMAT or tree.get("version") != 1:
        raise CheckpointCorruptError(f"{where} holds no alphatriangle checkpoint", path=where)
    return CheckpointData.model_validate(tree["fields"])


def buffer_from_tree(tree: Mapping[str, Any], where: Path) -> BufferData:
    if tree.get("format") != _BUFFER_FORMAT or tree.get("version") != 1:
        raise CheckpointCorruptError(f"{where} holds no alphatriangle buffer", path=where)
    return BufferData(buffer_state=tree["buffer_state"])


# -- the run's configuration ----------------------------------------------------------------


def _json_value(value: Any, key: str) -> Any:
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"save_run_config: {key} is {value}, which JSON cannot hold")
        return value
    if isinstance(value, BaseModel):
        try:
            return _json_value(value.model_dump(mode="json"), key)
        except ValueError as exc:  # pydantic's serialization errors are ValueErrors
            raise TypeError(f"save_run_config: {key} cannot be written as JSON: {exc}") from exc
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        result = {}
        for name, item in value.items():
            if not isinstance(name, str):
                raise TypeError(
                    f"save_run_config: {key} has the key {name!r}, a "
                    f"{type(name).__name__}: JSON keys are strings"
                )
            result[name] = _json_value(item, f"{key}.{name}")
        return result
    if isinstance(value, (list, tuple)):
        return [_json_value(item, f"{key}[{index}]") for index, item in enumerate(value)]
    raise TypeError(
        f"save_run_config: {key} is a {type(value).__name__}, which JSON cannot hold "
        "(give plain values, pydantic models or paths)"
    )


def run_config_json(configs: Mapping[str, Any]) -> bytes:
    """``configs`` as JSON: pydantic models as their fields (``model_dump(mode="json")``),
    paths as strings. A value JSON cannot hold (a tensor, an array, any other object) is a
    TypeError naming its key (``model.layers[2]``); a NaN or infinity a ValueError."""
    if not isinstance(configs, Mapping):
        raise TypeError(f"save_run_config: configs is a {type(configs).__name__}, not a mapping")
    data = {}
    for name, value in configs.items():
        if not isinstance(name, str):
            raise TypeError(f"save_run_config: the key {name!r} is not a string")
        data[name] = _json_value(value, name)
    return json.dumps(data, indent=2, sort_keys=True, allow_nan=False).encode()
