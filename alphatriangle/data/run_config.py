"""The run's configuration as a JSON file beside its checkpoints.

Guarantee: the file is written atomically (temporary file, fsync, rename, fsync of the
directory): a crash leaves the old file or the new one, never a torn one. What JSON cannot
hold is refused before anything is written: a ``TypeError`` naming the key of the value
(``model.layers[2]``), a ``ValueError`` for a NaN or an infinity. Pydantic models are
written as their fields (``model_dump(mode="json")``), paths as strings. Cost: one small
file and two fsyncs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

from pydantic import BaseModel

from alphatriangle.data.checkpoint import write_file_atomically

__all__ = ["run_config_json", "write_run_config"]


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


def write_run_config(path: Path, configs: Mapping[str, Any]) -> Path:
    """Write ``configs`` as JSON to ``path``, atomically (the engine's
    ``write_file_atomically``); nothing is written when a value is refused."""
    data = run_config_json(configs)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomically(path, data)
    return path
