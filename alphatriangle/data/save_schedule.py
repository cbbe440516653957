"""When the DataManager saves each item of a step: the checkpoint and the buffer each on a
schedule of its own, made of the engine's save policies, and the engine's ``save_policy``
asking that schedule.

From the configs: the checkpoint ``SaveEvery(CHECKPOINT_SAVE_FREQ_STEPS)``, ``|
SaveInterval(CHECKPOINT_SAVE_FREQ_SECONDS)`` when set; the buffer
``SaveEvery(BUFFER_SAVE_FREQ_STEPS)`` when ``SAVE_BUFFER``. Each item's policy sees its own
context: the last step that saved that item and when, counted from the schedule's opening
before the first (so a resumed run does not save by wall time at its first step). The
engine's manager is given :meth:`SaveSchedule.engine_policy`, due when any item is: a step
the schedule calls due is written without ``force``, and ``manager.should_save(step)`` tells
a caller what the DataManager would save. Cost: one policy call per item and step.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from alphatriangle.config import PersistenceConfig, TrainConfig
from alphatriangle.data.checkpoint import (
    SaveContext,
    SaveEvery,
    SaveInterval,
    SavePolicy,
    SaveWhen,
)
from alphatriangle.data.state_trees import BUFFER_ITEM, CHECKPOINT_ITEM

__all__ = ["SaveSchedule"]


class SaveSchedule:
    """Which items are due at a step, each by its own policy and context (see the module
    docstring). Thread-safe: the engine may ask from the saving thread."""

    def __init__(self, policies: Mapping[str, SavePolicy], clock: Callable[[], float]) -> None:
        self.policies = dict(policies)
        self._clock = clock
        self._lock = threading.Lock()
        opened_at = clock()
        self._last: dict[str, tuple[int | None, float]] = {
            item: (None, opened_at) for item in self.policies
        }
        self._decided: tuple[int, frozenset[str], float] | None = None

    @classmethod
    def from_configs(
        cls, train: TrainConfig, persist: PersistenceConfig, clock: Callable[[], float]
    ) -> SaveSchedule:
        checkpoint: SavePolicy = SaveEvery(train.CHECKPOINT_SAVE_FREQ_STEPS)
        if train.CHECKPOINT_SAVE_FREQ_SECONDS is not None:
            checkpoint |= SaveInterval(train.CHECKPOINT_SAVE_FREQ_SECONDS)
        policies = {CHECKPOINT_ITEM: checkpoint}
        if persist.SAVE_BUFFER:
            policies[BUFFER_ITEM] = SaveEvery(persist.BUFFER_SAVE_FREQ_STEPS)
        return cls(policies, clock)

    def due_items(self, step: int) -> frozenset[str]:
        """The items due at ``step`` now. The engine's policy answers the same for ``step``
        (not a second look at the clock), and :meth:`saved` counts from this time."""
        now = self._clock()
        due = self._evaluate(step, now)
        with self._lock:
            self._decided = (step, due, now)
        return due

    def saved(self, step: int, items: frozenset[str] | set[str]) -> None:
        """Record that ``items`` were saved at ``step``, decided by the last
        :meth:`due_items` call for it: their policies count from then."""
        with self._lock:
            decided = self._decided
            now = decided[2] if decided is not None and decided[0] == step else self._clock()
            for item in items & self.policies.keys():
                self._last[item] = (step, now)

    def _evaluate(self, step: int, now: float) -> frozenset[str]:
        with self._lock:
            last = dict(self._last)
        return frozenset(
            item
            for item, policy in self.policies.items()
            if policy.should_save(SaveContext(step, now, *last[item]))
        )

    def _any_due(self, step: int) -> bool:
        with self._lock:
            decided = self._decided
        if decided is not None and decided[0] == step:
            return bool(decided[1])
        return bool(self._evaluate(step, self._clock()))

    def engine_policy(self) -> SavePolicy:
        """The engine's ``save_policy``: due when any item is."""
        return SaveWhen(self._any_due)
