"""The one fallback loop: the newest intact of several candidate steps, each corrupt one
skipped loudly (an error naming it and why), never silently. Used by auto-resume
(``restore(fallback=True)``) and by ``fetch`` from remote storage."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TypeVar

from alphatriangle.data.checkpoint.errors import CheckpointCorruptError

__all__ = ["newest_intact"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


def newest_intact(
    candidates: Iterable[int],
    attempt: Callable[[int], T],
    *,
    skipped: str,
    found: str,
    passes: tuple[type[BaseException], ...] = (),
) -> tuple[int, T] | None:
    """The first candidate (newest first) for which ``attempt`` succeeds, and its result.

    A :class:`CheckpointCorruptError` logs ``skipped % (step, error)`` and tries the next;
    an exception of ``passes`` tries the next silently (a step deleted meanwhile). Once a
    candidate succeeds after a skip, ``found % step`` is logged. When none succeeds, the
    first corruption is raised; None when there was none."""
    first_error: CheckpointCorruptError | None = None
    for candidate in candidates:
        try:
            result = attempt(candidate)
        except CheckpointCorruptError as exc:
            logger.error(skipped, candidate, exc)
            first_error = first_error or exc
            continue
        except passes:
            continue
        if first_error is not None:
            logger.error(found, candidate)
        return candidate, result
    if first_error is not None:
        raise first_error
    return None
