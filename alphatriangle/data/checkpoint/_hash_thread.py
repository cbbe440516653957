"""The one side thread that hashes: jobs run in order on a daemon thread taken from a small
pool of idle ones, so that a restore or a save does not start a thread of its own.

Users: the checksum pass of a restore and the per-array checks (``_verified_files.py``), the
checksums of a save's files (``step_writer.py``). xxh3 and SHA-256 release the GIL, so the
jobs overlap with the caller's reads and writes; a job needs the GIL only to begin, and
:meth:`HashThread.until_begun` hands it over.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from typing import Any

from alphatriangle.data.checkpoint._interrupts import wait_interruptibly

__all__ = ["HashThread"]


class _Worker:
    """A daemon thread running the jobs of one :class:`HashThread` at a time; idle workers
    wait in a small pool, so that a restore or a save does not start a thread of its own."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[tuple[HashThread, Callable[..., None] | None, Any]] = (
            queue.SimpleQueue()
        )
        self.thread = threading.Thread(target=self._run, name="checksum", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            owner, function, arguments = self.jobs.get()
            if function is not None:
                if not owner.begun:
                    owner.begun = True
                    owner.beginning.release()
                try:
                    function(*arguments)
                except BaseException as exc:  # raised on the owner's thread by join()
                    owner.error = owner.error or exc
                # Waiting for the next job, hold nothing of this one: a mapped file's view
                # kept here would keep the file mapped (and, deleted, on disk) meanwhile.
                del owner, function, arguments
                continue
            # The owner's last job is done: back to the pool first (the owner may take the
            # next HashThread at once), then wake the owner.
            pooled = _pool.give_back(self)
            owner.done.set()
            del owner
            if not pooled:
                return


_IDLE_WORKERS = 4  # more idle than this: the thread ends


class _WorkerPool:
    """The idle workers of this process (a forked child inherits the list, not threads)."""

    def __init__(self) -> None:
        self.idle: list[_Worker] = []
        self.lock = threading.Lock()
        self.pid = os.getpid()

    def take(self) -> _Worker:
        with self.lock:
            if self.pid != os.getpid():
                self.idle.clear()
                self.pid = os.getpid()
            while self.idle:
                worker = self.idle.pop()
                if worker.thread.is_alive():
                    return worker
        return _Worker()

    def give_back(self, worker: _Worker) -> bool:
        """Whether ``worker`` was pooled (else its thread is to end)."""
        with self.lock:
            if len(self.idle) >= _IDLE_WORKERS or self.pid != os.getpid():
                return False
            self.idle.append(worker)
            return True


_pool = _WorkerPool()


class HashThread:
    """Hashing jobs run in order on one daemon thread (xxh3 and SHA-256 release the GIL, so
    they overlap with the caller's reads and writes). The buffers a job hashes must stay
    unchanged until :meth:`join` returns; always :meth:`join` (in a ``finally``), or
    :meth:`close` when the results will not be read (then nothing may write the buffers
    again: the jobs still read them).

    The thread is taken from a small pool of idle ones and given back when its last job is
    done (none is started per use; an idle one wakes to its first job in about 0.12 ms on
    the development machine, see :meth:`until_begun`); an interrupted :meth:`join` leaves
    it to finish the jobs, after which it goes back to the pool."""

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.begun = False  # the worker has taken the first job (``beginning`` released)
        self.beginning = threading.Lock()
        self.beginning.acquire()
        self._worker: _Worker | None = _pool.take()

    def put(self, function: Callable[..., None], *arguments: Any) -> None:
        if self._worker is None:
            raise RuntimeError("HashThread.put after join")
        self._worker.jobs.put((self, function, arguments))

    def until_begun(self) -> None:
        """Wait until the thread has begun the first job (put before this call).

        The thread needs the GIL to begin a job (then the hashing releases it); a caller
        that goes on running Python holds it until its next blocking call, which delayed
        the pass over a 10 MB file by 0.35 ms (a third of the pass). Waiting here hands
        the GIL over at once, for the thread's wake-up time."""
        self.beginning.acquire()  # (brief: the thread's wake-up; a Ctrl-C waits for it)
        self.beginning.release()

    def close(self) -> None:
        """No more jobs: the thread runs those put, then goes back to the pool (a caller
        that will not read their results need not wait for them)."""
        if self._worker is not None:
            self._worker.jobs.put((self, None, ()))
            self._worker = None

    def join(self) -> None:
        """Wait for every job (a held Ctrl-C need not wait for a long pass); raise a job's
        failure."""
        self.close()
        wait_interruptibly(self._joined)
        if self.error is not None:
            raise self.error

    def _joined(self, timeout: float | None) -> bool:
        return self.done.wait(timeout)
