"""Composing policies with ``|`` and ``&``, the one rule of the engine's two policy families
(retention, save decisions), the way tenacity composes its stop conditions.

A family's base derives from :class:`Composable` (``family=`` names it in errors); its two
compositions derive from :class:`Composition` and say which operator builds them
(``joins="|"`` or ``joins="&"``). ``a | b`` is then the family's ``|`` composition of
``(a, b)``, nested ones of the same kind flattened (``a | b | c`` is one composition of
three); composing with anything but a policy of the same family is a TypeError. Cost: one
tuple per operator.
"""

from __future__ import annotations

from abc import ABC
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Literal, TypeVar, cast

__all__ = ["Composable", "Composition"]

Operator = Literal["|", "&"]
AnyT = TypeVar("AnyT", bound="Composition")
AllT = TypeVar("AllT", bound="Composition")


class Composable(ABC, Generic[AnyT, AllT]):
    """The base of a policy family: ``|`` builds its ``AnyT``, ``&`` its ``AllT``."""

    _family: ClassVar[str]
    _compositions: ClassVar[dict[Operator, type[Composition]]]

    def __init_subclass__(cls, *, family: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if family is not None:
            cls._family, cls._compositions = family, {}

    def __or__(self, other: Composable[AnyT, AllT]) -> AnyT:
        return cast("AnyT", self._composed("|", other))

    def __and__(self, other: Composable[AnyT, AllT]) -> AllT:
        return cast("AllT", self._composed("&", other))

    def _composed(self, operator: Operator, other: object) -> Composition:
        kind = self._compositions[operator]
        flat: list[Any] = []
        for policy in (self, other):
            if not isinstance(policy, Composable) or policy._compositions is not self._compositions:
                raise TypeError(f"cannot compose a {self._family} with {policy!r}")
            flat.extend(policy.policies if isinstance(policy, kind) else (policy,))
        return kind(tuple(flat))


@dataclass(frozen=True)
class Composition:
    """A family's composition of ``policies`` (mixed into a subclass of its base), built by
    ``operator``."""

    policies: tuple[Any, ...]
    operator: ClassVar[Operator]

    def __init_subclass__(cls, *, joins: Operator | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if joins is not None:
            cls.operator = joins
            cast("type[Composable[Any, Any]]", cls)._compositions[joins] = cls
