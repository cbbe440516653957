"""The background writer thread, and the handle a save returns.

Jobs run one at a time, in submission order, on one daemon thread. A job's failure completes
its handle with the exception and is kept to be raised, with its original type: to every
thread that waits (``wait_until_finished``, ``close``) while it is pending, and to the next
``save``, so that no waiting thread can hide it from the training loop.

At interpreter exit, the jobs still queued are finished before the process ends (a script
that forgets ``close()`` loses no save); a save that fails then is logged as an error naming
its step.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from alphatriangle.data.checkpoint._interrupts import wait_interruptibly
from alphatriangle.data.checkpoint.errors import CheckpointError

__all__ = ["BackgroundWriter", "SaveHandle"]

logger = logging.getLogger(__name__)


@dataclass
class SaveHandle:
    """What ``save`` returns: two completions of one save.

    ``staged`` is done when the state has been captured (always, by the time ``save``
    returns); ``committed`` when the step is durable and visible, its result the step's
    directory, or the exception that stopped it. A handle always completes.
    """

    step: int
    committed: Future[Path] = field(default_factory=Future)

    @property
    def staged(self) -> Future[None]:
        """Done: ``save`` returns once the state is captured (one completed future shared
        by every handle, as there is nothing left to wait for)."""
        return _STAGED

    def result(self, timeout: float | None = None) -> Path:
        """Wait for the commit; the step's directory, or the save's error."""
        return self.committed.result(timeout)


_STAGED: Future[None] = Future()
_STAGED.set_result(None)

_Job = tuple[Callable[[], Path], SaveHandle, Callable[[], None], Callable[[], None]]


class BackgroundWriter:
    """One thread that runs submitted jobs in order and keeps their first failure."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()  # put: no Condition
        self._error: BaseException | None = None
        # Threads already raised the error (weakly: an ident could be reused by a new thread).
        self._error_seen_by: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
        self._error_lock = threading.Lock()
        self._idle = threading.Condition()
        self._pending: list[SaveHandle] = []
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        _register_exit_hook()
        _live_writers.add(self)

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
        the commit does not wait for; its failure is recorded like a job's).

        Raises :class:`CheckpointError` once the writer is stopped: a job is never queued
        where nothing will run it."""
        with self._idle:
            if self._stopped:
                raise CheckpointError(f"the writer {self.name} is stopped; nothing is saved")
            self._pending.append(handle)
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
                self.record(exc)
            try:
                cleanup()
            except BaseException as exc:
                self.record(exc)
            if error is not None:
                handle.committed.set_exception(error)
            else:
                assert result is not None
                handle.committed.set_result(result)
                try:
                    after()
                except BaseException as exc:
                    self.record(exc)
            with self._idle:
                self._pending.remove(handle)
                self._idle.notify_all()
            # Hold nothing of the job while idle: its closures keep the manager alive, and a
            # manager dropped without close() must be collectable (its lock freed).
            del entry, job, handle, cleanup, after, result, error

    def record(self, exc: BaseException) -> None:
        """Keep the first failure to raise; a further one before it is raised is logged as
        an error (and its save's handle still carries it)."""
        with self._error_lock:
            if self._error is None:
                self._error = exc
                self._error_seen_by = weakref.WeakSet()
            else:
                logger.error("a later background failure too: %r", exc)

    def has_error(self) -> bool:
        with self._error_lock:
            return self._error is not None

    def raise_error(self, *, clear: bool) -> None:
        """Raise the pending background failure, with its original type, unless this thread
        was raised it already.

        Waiters (``clear=False``) leave it pending: every waiting thread sees it, and so does
        the next ``clear=True`` caller (``save``, ``close``), which then forgets it; that
        caller is not raised it twice when its own thread already saw it while waiting."""
        me = threading.current_thread()
        with self._error_lock:
            error = self._error
            if error is None:
                return
            seen = me in self._error_seen_by
            if clear:
                self._error, self._error_seen_by = None, weakref.WeakSet()
            else:
                self._error_seen_by.add(me)
        if not seen:
            raise error

    def wait_idle(self) -> None:
        with self._idle:
            wait_interruptibly(
                lambda timeout: self._idle.wait_for(lambda: not self._pending, timeout)
            )

    def stop(self) -> None:
        """Finish the queued jobs, then end the thread. Every caller returns only once the
        thread has ended (a Ctrl-C on the main thread interrupts the wait, not the thread);
        later submissions are refused."""
        with self._idle:
            if not self._stopped:
                self._stopped = True
                self._jobs.put(None)
        if threading.current_thread() is not self._thread:  # a finalizer may run on it
            wait_interruptibly(self._joined)
        _live_writers.discard(self)

    def _joined(self, timeout: float | None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def finished(self) -> bool:
        """Whether the thread has ended (after :meth:`stop`): nothing is written any more."""
        return not self._thread.is_alive()


_live_writers: weakref.WeakSet[BackgroundWriter] = weakref.WeakSet()


def _finish_at_exit() -> None:
    """At interpreter exit, finish what writers still have queued (their threads are
    daemons, which the interpreter would otherwise kill mid-write)."""
    for writer in list(_live_writers):
        with writer._idle:
            handles = list(writer._pending)
        # A committed save whose retention or upload hand-off still runs is not in flight.
        in_flight = [h.step for h in handles if not h.committed.done()]
        if in_flight:
            logger.warning(
                "interpreter exiting: finishing %d checkpoint save(s) in flight (steps %s); "
                "call close() to do this yourself",
                len(in_flight),
                in_flight,
            )
        writer.stop()
        for handle in handles:
            error = handle.committed.exception()
            if error is not None:
                logger.error("step %d was not saved before exit: %r", handle.step, error)


_exit_hook_registered = False
_exit_hook_lock = threading.Lock()


def _register_exit_hook() -> None:
    """Register :func:`_finish_at_exit` once, when the first writer starts (not at import)."""
    global _exit_hook_registered  # noqa: PLW0603 - one registration per process
    with _exit_hook_lock:
        if not _exit_hook_registered:
            atexit.register(_finish_at_exit)
            _exit_hook_registered = True
