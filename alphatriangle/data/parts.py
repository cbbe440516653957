"""The live objects of a training run as users hand them to the DataManager: checked, read
for a save, and given their state back on resume.

The network is 1.0.0's ``NeuralNetwork`` (its ``.model`` holds the weights; its configs are
saved too) or any ``torch.nn.Module``; the stats are a ``StatsCollectorActor`` handle, a
plain ``StatsCollector`` or None; the optimizer, scheduler and buffer anything with
``state_dict()``. Anything else is a ``TypeError`` naming the parameter, before anything is
saved or applied. Cost: reading a state references the live tensors (the engine's staging
copies them); the stats actor's state is one remote call bounded by a timeout, and giving it
back one more.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from pydantic import BaseModel

from alphatriangle.data.rng_state import restore_rng_state
from alphatriangle.data.schemas import LoadedTrainingState

__all__ = [
    "apply_loaded_state",
    "check_parts",
    "load_network_weights",
    "network_configs",
    "network_model",
    "put_stats_state",
    "stats_state",
]


def _not_a(what: str, part: Any, why: str) -> TypeError:
    """The error for a part that does not fit: the parameter, what it is, and ``why``."""
    return TypeError(f"{what} is a {type(part).__name__}{why}")


def network_model(nn: Any, caller: str) -> torch.nn.Module:
    """The Module holding the weights of ``nn``: ``nn`` itself, or 1.0.0's
    ``NeuralNetwork.model``; TypeError naming ``caller``'s parameter otherwise."""
    if isinstance(nn, torch.nn.Module):
        return nn
    model = getattr(nn, "model", None)
    if isinstance(model, torch.nn.Module):
        return model
    raise _not_a(
        f"{caller}: nn",
        nn,
        ": expected alphatriangle's NeuralNetwork (with .model) or a torch.nn.Module",
    )


def _config_dict(config: Any, what: str) -> dict[str, Any]:
    """A config as plain data: a pydantic model's fields (not its computed ones), a mapping
    as a dict, None as {}."""
    if config is None:
        return {}
    if isinstance(config, BaseModel):
        return {name: getattr(config, name) for name in type(config).model_fields}
    if isinstance(config, Mapping):
        return dict(config)
    raise _not_a(f"nn.{what}", config, ": expected a pydantic config or None")


def network_configs(nn: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model and env config dicts of a ``NeuralNetwork``; empty for a plain Module."""
    if network_model(nn, "save_training_state") is nn:
        return {}, {}
    return (
        _config_dict(getattr(nn, "model_config", None), "model_config"),
        _config_dict(getattr(nn, "env_config", None), "env_config"),
    )


def load_network_weights(nn: Any, weights: Mapping[str, Any]) -> None:
    """Put saved weights into ``nn`` (a NeuralNetwork or a torch.nn.Module)."""
    model = network_model(nn, "apply_loaded_state")
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
    raise _not_a(
        parameter, stats, ": expected a StatsCollectorActor handle, a StatsCollector, or None"
    )


def stats_state(stats: Any, timeout_s: float) -> dict[str, Any]:
    """The stats' state: an actor's waited for at most ``timeout_s`` ({} when it does not
    answer in time), a plain collector's at once, {} for None."""
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


def check_parts(*, nn: Any, optimizer: Any, stats: Any, buffer: Any, scheduler: Any) -> None:
    """TypeError naming the parameter of ``save_training_state`` that a part does not fit
    (checked at every call, whether or not anything is due)."""
    network_model(nn, "save_training_state")
    _check_stats(stats, "save_training_state: stats_collector_actor")
    for name, part in (("optimizer", optimizer), ("scheduler", scheduler), ("buffer", buffer)):
        if (part is not None or name == "optimizer") and not callable(
            getattr(part, "state_dict", None)
        ):
            raise _not_a(f"save_training_state: {name}", part, ", which has no state_dict()")


def apply_loaded_state(
    state: LoadedTrainingState,
    nn: Any,
    optimizer: torch.optim.Optimizer,
    *,
    buffer: Any = None,
    stats_collector_actor: Any = None,
    scheduler: Any = None,
) -> tuple[int, int, int]:
    """Put a loaded state back into the live objects: weights (into a ``NeuralNetwork`` or a
    ``torch.nn.Module``), optimizer, scheduler, RNG states, buffer (columns and priorities;
    or 1.0.0's experience list), stats (a ``StatsCollectorActor`` handle or a plain
    ``StatsCollector``). Returns (global_step, episodes_played, total_simulations_run),
    zeros when fresh."""
    data = state.checkpoint_data
    counters = (0, 0, 0)
    if data is not None:
        load_network_weights(nn, data.model_state_dict)
        optimizer.load_state_dict(data.optimizer_state_dict)
        if scheduler is not None and data.scheduler_state_dict is not None:
            scheduler.load_state_dict(data.scheduler_state_dict)
        if data.rng_state is not None:
            restore_rng_state(data.rng_state)
        if stats_collector_actor is not None and data.stats_collector_state:
            put_stats_state(stats_collector_actor, data.stats_collector_state)
        counters = (data.global_step, data.episodes_played, data.total_simulations_run)
    if buffer is not None and state.buffer_data is not None:
        if state.buffer_data.buffer_state is not None:
            buffer.load_state_dict(state.buffer_data.buffer_state)
        elif state.buffer_data.buffer_list:
            buffer.add_batch(state.buffer_data.buffer_list)
    return counters
