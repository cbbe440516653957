"""Statistics collection: :class:`StatsCollector`, and ``StatsCollectorActor`` (Ray).

``ray`` is imported only when one of these names is first used.
"""

from __future__ import annotations

from typing import Any

__all__ = ["StatsCollector", "StatsCollectorActor", "fetch_actor_state"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from alphatriangle.stats import collector

        return getattr(collector, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
