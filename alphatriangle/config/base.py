"""``ConfigBase``: what every config shares in reading the fields alphatriangle 1.0.0 saved.

A config is a frozen pydantic model that refuses unknown fields. On top of that, each config
class may declare three things about 1.0.0's form of it:

- ``legacy_aliases``: 1.0.0 names of a field, read as that field (1.0.0's ``MCTSConfig``
  wrote ``num_simulations`` where ours says ``NUM_SIMULATIONS``); giving both is an error;
- ``derived_fields``: values 1.0.0 computed from the fields and saved beside them
  (``ACTION_DIM``, ``MLFLOW_TRACKING_URI``); accepted on input and checked by ``check_derived``,
  never stored;
- ``check``: the checks across fields, run before the derived values and the warnings;
- ``ignored_fields``: fields kept for 1.0.0 that this code does not act on, each with the
  reason; a value other than the field's default gives an :class:`IgnoredFieldWarning`.

Cost: a dictionary copy and a few comparisons per construction.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, ModelWrapValidatorHandler, model_validator

__all__ = ["ConfigBase", "IgnoredFieldWarning"]


class IgnoredFieldWarning(UserWarning):
    """A config field that this code accepts (1.0.0 had it) but does not act on was given a
    value other than its default."""


class ConfigBase(BaseModel):
    """Frozen, unknown fields refused, 1.0.0's aliases, derived values and ignored fields
    handled as the module docstring says."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    legacy_aliases: ClassVar[Mapping[str, str]] = {}
    derived_fields: ClassVar[frozenset[str]] = frozenset()
    ignored_fields: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def accepted_names(cls) -> frozenset[str]:
        """Every key a mapping may hold to construct this config: its fields, 1.0.0's
        aliases of them and the derived values 1.0.0 saved."""
        return frozenset(cls.model_fields) | frozenset(cls.legacy_aliases) | cls.derived_fields

    def check(self) -> None:
        """ValueError naming the fields when they do not fit together (run once the fields
        are valid, before the derived values are checked and the warnings given)."""

    def check_at_most(self, low: str, high: str, message: str) -> None:
        """ValueError when field ``low`` is above field ``high``: ``message`` with ``{LOW}`` and
        ``{HIGH}`` (the fields' names in braces) each read as ``NAME (value)``."""
        low_value, high_value = getattr(self, low), getattr(self, high)
        if low_value > high_value:
            named = {low: f"{low} ({low_value})", high: f"{high} ({high_value})"}
            raise ValueError(message.format(**named))

    def check_derived(self, name: str, value: Any) -> None:
        """ValueError when a derived value 1.0.0 saved disagrees with the fields."""

    def ignored_default(self, name: str) -> Any:
        """The value of an ignored field that does not warn: its default."""
        return type(self).model_fields[name].get_default(call_default_factory=True)

    @model_validator(mode="wrap")
    @classmethod
    def _read_legacy(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        derived: dict[str, Any] = {}
        if isinstance(data, Mapping):
            data = dict(data)
            for old, new in cls.legacy_aliases.items():
                if old in data:
                    if new in data:
                        raise ValueError(
                            f"{old} (1.0.0's name) and {new} name the same field: give one"
                        )
                    data[new] = data.pop(old)
            derived = {name: data.pop(name) for name in cls.derived_fields if name in data}
        config = handler(data)
        config.check()
        for name, value in derived.items():
            config.check_derived(name, value)
        config._warn_ignored()
        return config

    def _warn_ignored(self) -> None:
        for name, reason in self.ignored_fields.items():
            value = getattr(self, name)
            if value != self.ignored_default(name):
                warnings.warn(
                    f"{type(self).__name__}.{name}={value!r} is accepted but not acted on: "
                    f"{reason}",
                    IgnoredFieldWarning,
                    stacklevel=2,
                )
