"""The one fallback loop: the newest intact of several candidates, each corrupt one skipped
loudly (an error naming it and why), never silently. Used by auto-resume
(``restore(fallback=True)``), by ``fetch`` from remote storage, and exported for callers
with candidates of their own (files of another format)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TypeVar

from alphatriangle.data.checkpoint.errors import CheckpointCorruptError

__all__ = ["newest_intact"]

logger = logging.getLogger(__name__)

C = TypeVar("C")
T = TypeVar("T")


def newest_intact(
    candidates: Iterable[C],
    attempt: Callable[[C], T],
    *,
    skipped: str,
    found: str,
    passes: tuple[type[BaseException], ...] = (),
    none_intact: Callable[[list[CheckpointCorruptError]], BaseException] | None = None,
) -> tuple[C, T] | None:
    """The first candidate (newest first) for which ``attempt`` succeeds, and its result.

    A :class:`CheckpointCorruptError` logs ``skipped % (candidate, error)`` and tries the
    next; an exception of ``passes`` tries the next silently (a step deleted meanwhile). Once
    a candidate succeeds after a skip, ``found % candidate`` is logged. When none succeeds,
    the error ``none_intact`` makes of the corruptions (in order) is raised, by default the
    first corruption; None when there was none."""
    errors: list[CheckpointCorruptError] = []
    for candidate in candidates:
        try:
            result = attempt(candidate)
        except CheckpointCorruptError as exc:
            logger.error(skipped, candidate, exc)
            errors.append(exc)
            continue
        except passes:
            continue
        if errors:
            logger.error(found, candidate)
        return candidate, result
    if errors:
        raise errors[0] if none_intact is None else none_intact(errors)
    return None
