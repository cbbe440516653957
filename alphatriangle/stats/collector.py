"""Metrics collected per step, with a bounded history per metric; as a Ray actor.

:class:`StatsCollector` is the plain class (usable and testable without Ray);
``StatsCollectorActor`` is the same class as a Ray actor (``ray`` is imported here, and only
when this module is). :func:`fetch_actor_state` is how a saver asks an actor for its state:
it waits a bounded time, and a slow or dead actor costs a warning, never a hang.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import ray

from alphatriangle.utils.types import StatsCollectorData

__all__ = ["StatsCollector", "StatsCollectorActor", "fetch_actor_state"]

logger = logging.getLogger(__name__)

STATE_FORMAT = "alphatriangle.StatsCollector"
STATE_VERSION = 1


class StatsCollector:
    """``log(name, value, step)`` keeps the last ``max_history`` (step, value) pairs of each
    metric. Values must be finite real numbers; a non-finite value is counted and dropped
    (``dropped``), never stored."""

    def __init__(self, max_history: int = 1000) -> None:
        if max_history < 1:
            raise ValueError(f"max_history must be >= 1, got {max_history}")
        self.max_history = max_history
        self._data: StatsCollectorData = {}
        self.dropped: dict[str, int] = {}
        self.extra: dict[str, Any] = {}  # a restored state without metric history

    def _finite(self, name: str, value: float) -> float | None:
        """``value`` as a float when it is finite; else None, counted in ``dropped``."""
        value = float(value)
        if math.isfinite(value):
            return value
        self.dropped[name] = self.dropped.get(name, 0) + 1
        return None

    def log(self, name: str, value: float, step: int) -> None:
        finite = self._finite(name, value)
        if finite is None:
            return
        history = self._data.get(name)
        if history is None:
            history = self._data[name] = deque(maxlen=self.max_history)
        history.append((int(step), finite))

    def log_batch(
        self,
        metrics: Mapping[str, float] | Iterable[tuple[str, float, int]],
        step: int | None = None,
    ) -> None:
        """``log_batch({"loss": 0.3, ...}, step)``, or an iterable of (name, value, step)."""
        if isinstance(metrics, Mapping):
            if step is None:
                raise ValueError("log_batch of a mapping needs the step")
            for name, value in metrics.items():
                self.log(name, value, step)
        else:
            for name, value, at in metrics:
                self.log(name, value, at)

    def get_metric_data(self) -> StatsCollectorData:
        return {
            name: deque(history, maxlen=self.max_history) for name, history in self._data.items()
        }

    def get_state(self) -> dict[str, Any]:
        """A state tree of arrays: per metric its steps (int64) and values (float64)."""
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "max_history": self.max_history,
            "metrics": {
                name: {
                    "steps": np.fromiter((s for s, _ in history), np.int64, len(history)),
                    "values": np.fromiter((v for _, v in history), np.float64, len(history)),
                }
                for name, history in self._data.items()
            },
            "dropped": dict(self.dropped),
            "extra": dict(self.extra),
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`get_state`, or from what alphatriangle 1.0.0's
        ``StatsCollectorActor.get_state`` returned (see :meth:`_set_legacy_state`). Any other
        plain dict without ``format`` is kept in ``extra`` and the metrics start empty."""
        if state.get("format") != STATE_FORMAT:
            if "_metrics_data_list" in state:
                self._set_legacy_state(state)
                return
            self._data, self.dropped, self.extra = {}, {}, dict(state)
            logger.info("stats collector: a state without metric history kept as-is")
            return
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"stats collector state version {state.get('version')!r} unknown")
        self.max_history = int(state["max_history"])
        data: StatsCollectorData = {}
        for name, series in state["metrics"].items():
            steps, values = series["steps"], series["values"]
            if len(steps) != len(values):
                raise ValueError(f"metric {name!r}: {len(steps)} steps but {len(values)} values")
            data[name] = deque(
                zip(np.asarray(steps).tolist(), np.asarray(values).tolist(), strict=True),
                maxlen=self.max_history,
            )
        self._data = data
        self.dropped = dict(state.get("dropped", {}))
        self.extra = dict(state.get("extra", {}))

    def _set_legacy_state(self, state: Mapping[str, Any]) -> None:
        """1.0.0's state: ``{"max_history": int | None, "_metrics_data_list": {name:
        [(StepInfo, value), ...]}}``, where a StepInfo is a dict of counters. Each entry is
        kept as (``global_step``, value), the step every 1.0.0 metric carried; its other
        counters (``game_step_index``, ``buffer_size``) are not kept (logged). An entry
        without a ``global_step`` or with a non-finite value is counted in ``dropped`` and
        logged, never kept silently. ``max_history`` None (unbounded in 1.0.0) becomes the
        larger of this collector's and the longest history restored."""
        series: Mapping[str, Any] = state["_metrics_data_list"]
        if not isinstance(series, Mapping):
            raise ValueError(
                f"1.0.0 stats state: _metrics_data_list is a {type(series).__name__}, not a dict"
            )
        longest = max((len(items) for items in series.values()), default=0)
        saved_max = state.get("max_history")
        max_history = int(saved_max) if saved_max else max(self.max_history, longest)
        if max_history < 1:
            raise ValueError(f"1.0.0 stats state: max_history {saved_max!r} is not >= 1")
        self.max_history = max_history
        self._data, self.dropped, self.extra = {}, {}, {}
        other_counters: set[str] = set()
        for name, items in series.items():
            history: deque[tuple[int, float]] = deque(maxlen=max_history)
            for info, value in items:
                has_step = isinstance(info, Mapping) and "global_step" in info
                finite = self._finite(name, value if has_step else math.nan)
                if finite is None:
                    continue
                other_counters.update(key for key in info if key != "global_step")
                history.append((int(info["global_step"]), finite))
            self._data[name] = history
        restored = sum(len(history) for history in self._data.values())
        logger.info(
            "stats collector: restored %d entries of %d metrics from a 1.0.0 state",
            restored,
            len(self._data),
        )
        if other_counters:
            logger.info(
                "stats collector: 1.0.0 step counters other than global_step not kept: %s",
                ", ".join(sorted(other_counters)),
            )
        if self.dropped:
            logger.warning(
                "stats collector: 1.0.0 entries without a global_step or a finite value "
                "dropped: %s",
                self.dropped,
            )


StatsCollectorActor = ray.remote(num_cpus=0)(StatsCollector)


def fetch_actor_state(actor: Any, timeout_s: float) -> dict[str, Any] | None:
    """``actor.get_state()``, waiting at most ``timeout_s``; None (with a warning naming the
    cause) when the actor is slow, dead or unreachable: whoever saves goes on without it."""
    if actor is None:
        return None
    try:
        state: dict[str, Any] = ray.get(actor.get_state.remote(), timeout=timeout_s)
        return state
    except ray.exceptions.GetTimeoutError:
        logger.warning(
            "the stats actor did not answer within %.1f s: saving without its state", timeout_s
        )
    except ray.exceptions.RayActorError as exc:
        logger.warning("the stats actor is dead (%s): saving without its state", exc)
    except ray.exceptions.RayError as exc:
        logger.warning("the stats actor failed (%r): saving without its state", exc)
    return None
