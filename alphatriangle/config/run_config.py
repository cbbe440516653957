"""``RunConfigs``: every config of a training run in one object, built from the defaults, a
preset file, a YAML or JSON file, and command-line overrides, in that order. A run's
``configs.json`` (ours, or alphatriangle 1.0.0's) is such a file."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from alphatriangle.config.env_config import EnvConfig
from alphatriangle.config.mcts_config import MCTSConfig
from alphatriangle.config.model_config import ModelConfig
from alphatriangle.config.persistence_config import PersistenceConfig
from alphatriangle.config.train_config import TrainConfig

__all__ = ["ConfigFileError", "RunConfigs"]

# Section name -> (attribute, class). A file may use either name for a section.
_SECTIONS: dict[str, tuple[str, type[BaseModel]]] = {
    "EnvConfig": ("env", EnvConfig),
    "ModelConfig": ("model", ModelConfig),
    "TrainConfig": ("train", TrainConfig),
    "MCTSConfig": ("mcts", MCTSConfig),
    "PersistenceConfig": ("persistence", PersistenceConfig),
}
_ATTRIBUTES = {attribute: cls for attribute, cls in _SECTIONS.values()}


class ConfigFileError(ValueError):
    """A config file that cannot be read or holds an unknown or invalid field; the message
    names the file and the field."""


def _fields(cls: type[BaseModel]) -> frozenset[str]:
    """The keys a file may give for ``cls``: its fields, and for a config that reads 1.0.0's
    form, 1.0.0's names and saved derived values too."""
    accepted = getattr(cls, "accepted_names", None)
    return frozenset(accepted()) if accepted is not None else frozenset(cls.model_fields)


class RunConfigs(BaseModel):
    """The configs of one run: ``env``, ``model``, ``train``, ``mcts``, ``persistence``."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    env: EnvConfig = Field(default_factory=EnvConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    mcts: MCTSConfig = Field(default_factory=MCTSConfig)
    persistence: PersistenceConfig = Field(default_factory=PersistenceConfig)

    @classmethod
    def build(
        cls,
        path: Path | None = None,
        overrides: Mapping[str, Any] | None = None,
        *,
        preset: Path | None = None,
    ) -> RunConfigs:
        """Defaults, then the ``preset`` file, then the file at ``path``, then ``overrides``
        (flat field names). A file holds sections named by class (``TrainConfig:``) or
        attribute (``train:``), or flat field names; a flat name sets that field in every
        config that has it (``RUN_NAME`` is in ``TrainConfig`` and ``PersistenceConfig``)."""
        values: dict[str, dict[str, Any]] = {attribute: {} for attribute in _ATTRIBUTES}
        configs = cls()
        for source in (preset, path):
            if source is not None:
                _merge(values, _read(source), str(source))
                configs = cls._validated(values, str(source))
        flags = {k: v for k, v in (overrides or {}).items() if v is not None}
        if flags:
            _merge(values, flags, "the command line")
            configs = cls._validated(values, "the command line")
        return configs

    @classmethod
    def _validated(cls, values: dict[str, dict[str, Any]], where: str) -> RunConfigs:
        try:
            return cls(
                env=EnvConfig(**values["env"]),
                model=ModelConfig(**values["model"]),
                train=TrainConfig(**values["train"]),
                mcts=MCTSConfig(**values["mcts"]),
                persistence=PersistenceConfig(**values["persistence"]),
            )
        except ValidationError as exc:
            raise ConfigFileError(f"invalid configuration from {where}: {exc}") from exc

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """Plain data by class name, as the run's config file holds it."""
        return {
            name: getattr(self, attribute).model_dump(mode="json", include=set(cls.model_fields))
            for name, (attribute, cls) in _SECTIONS.items()
        }


def _read(path: Path) -> Mapping[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigFileError(f"cannot read the config file {path}: {exc}") from exc
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # yaml.YAMLError, json.JSONDecodeError
        raise ConfigFileError(f"{path} is not valid YAML or JSON: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigFileError(f"{path} must hold a mapping of fields, not {type(data).__name__}")
    return data


def _merge(values: dict[str, dict[str, Any]], data: Mapping[str, Any], where: str) -> None:
    for key, value in data.items():
        section = _SECTIONS.get(key) or ((key, _ATTRIBUTES[key]) if key in _ATTRIBUTES else None)
        if section is not None:
            attribute, cls = section
            if not isinstance(value, Mapping):
                raise ConfigFileError(f"{where}: section {key} must be a mapping of fields")
            unknown = set(value) - _fields(cls)
            if unknown:
                raise ConfigFileError(
                    f"{where}: {cls.__name__} has no field {', '.join(sorted(unknown))}"
                )
            values[attribute].update(value)
            continue
        owners = [a for a, cls in _ATTRIBUTES.items() if key in _fields(cls)]
        if not owners:
            raise ConfigFileError(f"{where}: no config has a field named {key!r}")
        for attribute in owners:
            values[attribute][key] = value
