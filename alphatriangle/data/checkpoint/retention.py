"""Which committed steps to keep: small frozen policies that compose.

A policy only decides: given the committed steps (step number, wall time, metrics) and the
time now, it returns the steps it keeps. The manager's deleter acts on the decision, and adds
its own protections that no policy can override (the newest step, steps in flight, steps a
reader holds, steps whose upload is pending).

Policies compose like tenacity's stop conditions::

    KeepLatest(3) | KeepBest(2, metric="loss", mode="min") | KeepEvery(steps=1000)

keeps a step if *any* part keeps it; ``&`` keeps it only if *every* part does. Nested
compositions are flattened, so ``a | b | c`` is one :class:`AnyOf` of three.

A NaN or infinite metric ranks worst, below every finite value (as Lightning's
``ModelCheckpoint`` ranks a NaN monitor), and never makes a step "best": a diverged run that
saves every N steps does not fill the disk. A step saved *without* the metric is *unranked*:
:class:`KeepBest` keeps such steps by default (``keep_unranked=True``, as Orbax keeps
checkpoints saved without metrics), so a step it cannot rank is never deleted on its
account. With ``keep_unranked=False`` it keeps only its ``k`` best (another policy may still
keep the rest).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from alphatriangle.data.checkpoint._composition import Composable, Composition

__all__ = [
    "AllOf",
    "AnyOf",
    "KeepAll",
    "KeepBest",
    "KeepEvery",
    "KeepInterval",
    "KeepLatest",
    "KeepRecent",
    "RetentionPolicy",
    "StepInfo",
]


@dataclass(frozen=True)
class StepInfo:
    """What a policy may know of a committed step."""

    step: int
    wall_time: float
    metrics: Mapping[str, float] = field(default_factory=dict)
    items: frozenset[str] = frozenset()  # the items the step holds, when known


class RetentionPolicy(Composable["AnyOf", "AllOf"], family="retention policy"):
    """Decides which committed steps to keep. Subclasses are frozen dataclasses; ``|`` and
    ``&`` compose them (``_composition.py``)."""

    @abstractmethod
    def keep(self, steps: Sequence[StepInfo], now: float) -> set[int]:
        """The step numbers kept, out of ``steps`` (sorted by ascending step)."""

    def parts(self) -> Iterator[RetentionPolicy]:
        """This policy and, for compositions, every policy inside it."""
        yield self


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _require_positive(what: str, value: object) -> None:
    _require(isinstance(value, (int, float)) and value > 0, f"{what} must be > 0, got {value!r}")


@dataclass(frozen=True)
class KeepAll(RetentionPolicy):
    """Keep every step: retention is off."""

    def keep(self, steps: Sequence[StepInfo], now: float) -> set[int]:
        return {s.step for s in steps}


@dataclass(frozen=True)
class KeepLatest(RetentionPolicy):
    """Keep the ``n`` newest steps (``n=0`` keeps none of its own; the newest step is
    protected by the manager regardless)."""

    n: int

    def __post_init__(self) -> None:
        _require(
            isinstance(self.n, int) and self.n >= 0, f"KeepLatest.n must be >= 0, got {self.n!r}"
        )

    def keep(self, steps: Sequence[StepInfo], now: float) -> set[int]:
        return {s.step for s in steps[max(0, len(steps) - self.n) :]} if self.n else set()


@dataclass(frozen=True)
class KeepEvery(RetentionPolicy):
    """Keep steps divisible by ``steps`` (milestones: 1000, 2000, ...)."""

    steps: int

    def __post_init__(self) -> None:
        _require(
            isinstance(self.steps, int) and self.steps >= 1,
            f"KeepEvery.steps must be >= 1, got {self.steps!r}",
        )

    def keep(self, steps: Sequence[StepInfo], now: float) -> set[int]:
        return {s.step for s in steps if s.step % self.steps == 0}


def _metric(info: StepInfo, metric: str) -> float | None:
    """The step's value of ``metric`` as a float; None when the step was saved without it."""
    value = info.metrics.get(metric)
    return None if value is None else float(value)


def ranking(steps: Sequence[StepInfo], metric: str, mode: Literal["min", "max"]) -> list[int]:
    """The steps that have ``metric``, best first: finite values by ``mode`` (ties go to the
    newer step), then NaN and infinite values, newer first. Steps without it are left out."""
    finite, worst = [], []
    for info in steps:
        value = _metric(info, metric)
        if value is None:
            continue
        if math.isfinite(value):
            finite.append((value if mode == "min" else -value, -info.step))
        else:
            worst.append(-info.step)
    finite.sort()
    worst.sort()
    return [-step for _, step in finite] + [-step for step in worst]


def best_of(
    steps: Sequence[StepInfo], metric: str, mode: Literal["min", "max"], k: int = 1
) -> list[int]:
    """The ``k`` best steps by ``metric``, best first; ties go to the newer step. Steps whose
    metric is missing, NaN or infinite are never among them."""
    finite = [s for s in steps if (v := _metric(s, metric)) is not None and math.isfinite(v)]
    return ranking(finite, metric, mode)[:k]


@dataclass(frozen=True)
class KeepBest(RetentionPolicy):
    """Keep the ``k`` best-ranked steps by ``metric`` (``mode`` "min" for a loss, "max" for a
    score; NaN and infinite values rank below every finite one), and, with ``keep_unranked``
    (the default), every step saved without the metric."""

    k: int
    metric: str
    mode: Literal["min", "max"] = "min"
    keep_unranked: bool = True

    def __post_init__(self) -> None:
        _require(
            isinstance(self.k, int) and self.k >= 1, f"KeepBest.k must be >= 1, got {self.k!r}"
        )
        _require(bool(self.metric), "KeepBest.metric must name a metric")
        _require(
            self.mode in ("min", "max"), f"KeepBest.mode must be 'min' or 'max', got {self.mode!r}"
        )

    def keep(self, steps: Sequence[StepInfo], now: float) -> set[int]:
        kept = set(ranking(steps, self.metric, self.mode)[: self.k])
        if self.keep_unranked:
            kept |= {s.step for s in steps if _metric(s, self.metric) is None}
        return kept


@dataclass(frozen=True)
class KeepInterval(RetentionPolicy):
    """Keep at least one step per ``seconds`` of wall time: the oldest step, then each step at
    least ``seconds`` after the last one kept. Steps kept once stay kept as newer ones come."""

    seconds: float

    def __post_init__(self) -> None:
        _require_positive("KeepInterval.seconds", self.seconds)

    def keep(self, steps: Sequence[StepInfo], now: float) -> set[int]:
        kept: set[int] = set()
        last = -math.inf
        for info in steps:
            if info.wall_time >= last + self.seconds:
                kept.add(info.step)
                last = info.wall_time
        return kept


@dataclass(frozen=True)
class KeepRecent(RetentionPolicy):
    """Keep every step saved within the last ``seconds`` (by the manager's clock)."""

    seconds: float

    def __post_init__(self) -> None:
        _require_positive("KeepRecent.seconds", self.seconds)

    def keep(self, steps: Sequence[StepInfo], now: float) -> set[int]:
        return {s.step for s in steps if now - s.wall_time <= self.seconds}


@dataclass(frozen=True)
class _Composition(RetentionPolicy, Composition):
    policies: tuple[RetentionPolicy, ...]

    def __post_init__(self) -> None:
        _require(len(self.policies) > 0, f"{type(self).__name__} needs at least one policy")

    def parts(self) -> Iterator[RetentionPolicy]:
        yield self
        for policy in self.policies:
            yield from policy.parts()


@dataclass(frozen=True)
class AnyOf(_Composition, joins="|"):
    """Keep a step if any part keeps it (built by ``|``)."""

    def keep(self, steps: Sequence[StepInfo], now: float) -> set[int]:
        kept: set[int] = set()
        for policy in self.policies:
            kept |= policy.keep(steps, now)
        return kept


@dataclass(frozen=True)
class AllOf(_Composition, joins="&"):
    """Keep a step only if every part keeps it (built by ``&``)."""

    def keep(self, steps: Sequence[StepInfo], now: float) -> set[int]:
        kept = {s.step for s in steps}
        for policy in self.policies:
            kept &= policy.keep(steps, now)
        return kept
