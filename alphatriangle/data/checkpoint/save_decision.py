"""When to save: small frozen policies that compose, the twins of the retention policies.

A policy decides from a :class:`SaveContext` (the step, the time now by the manager's clock,
the last step saved and when) whether ``save`` should write the step. ``|`` saves when any
part says so, ``&`` only when every part does::

    SaveEvery(steps=1000) | SaveInterval(seconds=1800) | SaveInitial()

Orbax's save-decision policies and Lightning's ``every_n_train_steps`` /
``train_time_interval`` have each of these.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from alphatriangle.data.checkpoint._composition import Composable, Composition

__all__ = [
    "AllSave",
    "AnySave",
    "SaveContext",
    "SaveEvery",
    "SaveInitial",
    "SaveInterval",
    "SaveOnSteps",
    "SavePolicy",
    "SaveWhen",
]


@dataclass(frozen=True)
class SaveContext:
    """What a save policy may know: ``last_step`` and ``last_time`` are those of the last
    save written by this manager, or, before the first, of the newest committed step (None
    in an empty directory)."""

    step: int
    now: float
    last_step: int | None
    last_time: float | None


class SavePolicy(Composable["AnySave", "AllSave"], family="save policy"):
    """Decides whether a step is due. Subclasses are frozen dataclasses; ``|`` and ``&``
    compose them (``_composition.py``)."""

    @abstractmethod
    def should_save(self, context: SaveContext) -> bool: ...


@dataclass(frozen=True)
class SaveEvery(SavePolicy):
    """Steps divisible by ``steps`` (``CheckpointManagerOptions.save_interval_steps``)."""

    steps: int

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1:
            raise ValueError(f"SaveEvery.steps must be an int >= 1, got {self.steps!r}")

    def should_save(self, context: SaveContext) -> bool:
        return context.step % self.steps == 0


@dataclass(frozen=True)
class SaveOnSteps(SavePolicy):
    """Exactly the listed steps."""

    steps: frozenset[int] = field(default_factory=frozenset)

    def __init__(self, steps: Iterable[int]) -> None:
        chosen = frozenset(steps)
        if any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in chosen):
            raise ValueError(f"SaveOnSteps takes ints >= 0, got {sorted(chosen, key=str)}")
        object.__setattr__(self, "steps", chosen)

    def should_save(self, context: SaveContext) -> bool:
        return context.step in self.steps


@dataclass(frozen=True)
class SaveInterval(SavePolicy):
    """When at least ``seconds`` of wall time passed since the last save (or there was
    none)."""

    seconds: float

    def __post_init__(self) -> None:
        if not isinstance(self.seconds, (int, float)) or not self.seconds > 0:
            raise ValueError(f"SaveInterval.seconds must be > 0, got {self.seconds!r}")

    def should_save(self, context: SaveContext) -> bool:
        return context.last_time is None or context.now - context.last_time >= self.seconds


@dataclass(frozen=True)
class SaveInitial(SavePolicy):
    """The first save into an empty directory."""

    def should_save(self, context: SaveContext) -> bool:
        return context.last_step is None


@dataclass(frozen=True)
class SaveWhen(SavePolicy):
    """Whenever ``fn(step)`` is true."""

    fn: Callable[[int], bool]

    def should_save(self, context: SaveContext) -> bool:
        return bool(self.fn(context.step))


@dataclass(frozen=True)
class _Composition(SavePolicy, Composition):
    policies: tuple[SavePolicy, ...]

    def should_save(self, context: SaveContext) -> bool:
        answers = (p.should_save(context) for p in self.policies)
        return all(answers) if self.operator == "&" else any(answers)


class AnySave(_Composition, joins="|"):
    """Due when any part is (built by ``|``)."""


class AllSave(_Composition, joins="&"):
    """Due only when every part is (built by ``&``)."""
