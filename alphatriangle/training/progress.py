"""What a training run shows while it runs: a progress bar on a terminal (rich), plain log
lines every few seconds otherwise."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["Progress", "ProgressInfo"]

logger = logging.getLogger(__name__)


@dataclass
class ProgressInfo:
    step: int
    loss: float | None
    buffer_size: int
    games: int
    committed_step: int | None
    stall_ms: float | None

    def describe(self) -> str:
        loss = "-" if self.loss is None else f"{self.loss:.3f}"
        committed = "-" if self.committed_step is None else str(self.committed_step)
        stall = "-" if self.stall_ms is None else f"{self.stall_ms:.1f} ms"
        return (
            f"loss {loss} | buffer {self.buffer_size} | games {self.games} | "
            f"committed {committed} | save stall {stall}"
        )


class Progress:
    """``update(info)`` as often as wanted; the bar redraws, log lines are rate-limited to
    one per ``log_every_s``."""

    def __init__(
        self,
        total_steps: int,
        start_step: int,
        *,
        interactive: bool | None = None,
        log_every_s: float = 5.0,
    ) -> None:
        self.total, self.start = total_steps, start_step
        self.interactive = sys.stdout.isatty() if interactive is None else interactive
        self.log_every_s = log_every_s
        self._last_log = 0.0
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        if self.interactive:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("step"),
                MofNCompleteColumn(),
                BarColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
            )
            self._bar.start()
            self._task = self._bar.add_task(
                "train", total=self.total, completed=self.start, info="filling the buffer"
            )
        return self

    def update(self, info: ProgressInfo, *, force_log: bool = False) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=info.step, info=info.describe())
            return
        now = time.monotonic()
        if force_log or now - self._last_log >= self.log_every_s:
            self._last_log = now
            logger.info("step %d/%d | %s", info.step, self.total, info.describe())

    def __exit__(self, *exc_info: object) -> None:
        if self._bar is not None:
            self._bar.stop()
