"""The background writer thread, and the handle a save returns.

Jobs run one at a time, in submission order, on one daemon thread. A job's failure completes
its handle with the exception and is kept to be raised, with its original type, at the
caller's next ``save``, ``wait_until_finished`` or ``close``: no background error is lost.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["BackgroundWriter", "SaveHandle"]

logger = logging.getLogger(__name__)


@dataclass
class SaveHandle:
    """What ``save`` returns: two completions of one save.

    ``staged`` is done when the state has been captured (always, by the time ``save``
    returns); ``committed`` when the step is durable and visible, its result the step's
    directory, or the exception that stopped it.
    """

    step: int
    staged: Future[None] = field(default_factory=Future)
    committed: Future[Path] = field(default_factory=Future)

    def result(self, timeout: float | None = None) -> Path:
        """Wait for the commit; the step's directory, or the save's error."""
        return self.committed.result(timeout)


class BackgroundWriter:
    """One thread that runs submitted jobs in order and keeps their first failure."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.Queue[
            tuple[Callable[[], Path], SaveHandle, Callable[[], None], Callable[[], None]] | None
        ] = queue.Queue()
        self._error: BaseException | None = None
        self._error_lock = threading.Lock()
        self._idle = threading.Condition()
        self._pending = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(
        self,
        job: Callable[[], Path],
        handle: SaveHandle,
        cleanup: Callable[[], None],
        after: Callable[[], None],
    ) -> None:
        """Run ``job`` in turn. Its failure is recorded first, then ``cleanup`` runs, then
        ``handle`` completes (whoever sees the save's resources free also sees its error),
        then, if the job succeeded, ``after`` runs (post-commit work such as retention, which
        the commit does not wait for; its failure is recorded like a job's)."""
        with self._idle:
            self._pending += 1
        self._jobs.put((job, handle, cleanup, after))

    def _run(self) -> None:
        while (entry := self._jobs.get()) is not None:
            job, handle, cleanup, after = entry
            result: Path | None = None
            error: BaseException | None = None
            try:
                result = job()
            except BaseException as exc:
                error = exc
                self._record(exc)
            try:
                cleanup()
            except BaseException as exc:
                self._record(exc)
            if error is not None:
                handle.committed.set_exception(error)
            else:
                assert result is not None
                handle.committed.set_result(result)
                try:
                    after()
                except BaseException as exc:
                    self._record(exc)
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()

    def _record(self, exc: BaseException) -> None:
        """Keep the first failure to raise; a further one before it is raised is logged as
        an error (and its save's handle still carries it)."""
        with self._error_lock:
            if self._error is None:
                self._error = exc
            else:
                logger.error("a later background failure too: %r", exc)

    def has_error(self) -> bool:
        with self._error_lock:
            return self._error is not None

    def raise_error(self) -> None:
        """Raise the first background failure not yet raised, with its original type."""
        with self._error_lock:
            error, self._error = self._error, None
        if error is not None:
            raise error

    def wait_idle(self) -> None:
        with self._idle:
            self._idle.wait_for(lambda: self._pending == 0)

    def stop(self) -> None:
        """Finish the queued jobs, then end the thread."""
        self._jobs.put(None)
        self._thread.join()
