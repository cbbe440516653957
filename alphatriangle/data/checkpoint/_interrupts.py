"""Ctrl-C anywhere: the manager's public calls hold a SIGINT until they are done.

A ``KeyboardInterrupt`` can land at almost any bytecode of the main thread, including the
exit of a ``with lock:`` block (the lock then stays held) or the ``finally`` of a reader
lease (its descriptor then leaks, and the step can never be deleted). Instead of making
every line interrupt-safe, :func:`interrupts_deferred` wraps a public method: while it runs
on the main thread, SIGINT is recorded by a handler of ours and delivered, through the
handler that was installed before (Python's default raises ``KeyboardInterrupt``), when the
call returns or raises. The waits that can last (for an earlier save, for the writer to
finish, for a lock another thread holds) poll instead of blocking, and a Ctrl-C held
meanwhile interrupts them at once, raising at the wait, where every resource is given back
by the code around it.

Off the main thread (where Python never delivers SIGINT), when SIGINT's handler is not a
Python callable, or inside a call already deferring, nothing changes. Cost: three calls of
``_signal``'s C functions per public call (under a microsecond); waits wake every 50 ms.
"""

from __future__ import annotations

import functools
import importlib
import signal
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any, TypeVar, cast

__all__ = ["holding", "interrupts_deferred", "wait_interruptibly"]

_F = TypeVar("_F", bound=Callable[..., Any])
_POLL_S = 0.05
# The C functions behind ``signal.signal``/``getsignal``: the module's wrappers convert
# handlers to enums, a failed enum lookup per call (12 of the 13 us the three calls cost).
_signal: Any = importlib.import_module("_signal")
_SIGINT = int(signal.SIGINT)


class _Deferral:
    """The deferral in force on the main thread, if any (one at a time: calls nest)."""

    def __init__(self) -> None:
        self.previous: Any = None
        self.held: FrameType | bool | None = False

    def hold(self, signum: int, frame: FrameType | None) -> None:
        self.held = frame if frame is not None else True

    def deliver_now(self) -> None:
        """Run the previous handler for a SIGINT held so far (raising, by default)."""
        if self.held is False:
            return
        frame = self.held if isinstance(self.held, FrameType) else None
        self.held = False
        previous = self.previous
        if callable(previous):
            previous(signal.SIGINT, frame)


_active: _Deferral | None = None


class _Deferred:
    def __enter__(self) -> None:
        global _active  # noqa: PLW0603 - the one deferral of the main thread
        self.deferral: _Deferral | None = None
        if _active is not None or threading.current_thread() is not threading.main_thread():
            return
        previous = _signal.getsignal(_SIGINT)
        if not callable(previous):
            return  # SIG_IGN, SIG_DFL, or a handler not set from Python: leave them be
        deferral = _Deferral()
        deferral.previous = _signal.signal(_SIGINT, deferral.hold)
        self.deferral = _active = deferral

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        global _active  # noqa: PLW0603
        deferral = self.deferral
        if deferral is None:
            return
        _active = None  # first: a SIGINT from here on is held, then delivered below
        _signal.signal(_SIGINT, deferral.previous)
        deferral.deliver_now()


def interrupts_deferred(method: _F) -> _F:
    """Decorate a public method: a SIGINT during it is delivered when it ends."""

    @functools.wraps(method)
    def deferring(*args: Any, **kwargs: Any) -> Any:
        with _Deferred():
            return method(*args, **kwargs)

    return cast(_F, deferring)


def wait_interruptibly(wait: Callable[[float | None], bool]) -> None:
    """Call ``wait(timeout)`` until it returns True. Under a deferral, poll, and deliver a
    SIGINT held meanwhile at once (its ``KeyboardInterrupt`` raised from here)."""
    deferral = _active
    if deferral is None or threading.current_thread() is not threading.main_thread():
        while not wait(None):
            pass
        return
    while not wait(_POLL_S):
        deferral.deliver_now()


class holding:  # noqa: N801 - used as ``with holding(lock):``, like a function
    """``with lock:`` whose wait for the lock a held Ctrl-C interrupts (see
    :func:`wait_interruptibly`); a free lock is taken at once."""

    __slots__ = ("_lock",)

    def __init__(self, lock: threading.Lock | threading.RLock) -> None:
        self._lock = lock

    def __enter__(self) -> None:
        lock = self._lock
        if not lock.acquire(blocking=False):
            wait_interruptibly(
                lambda timeout: lock.acquire(timeout=-1 if timeout is None else timeout)
            )

    def __exit__(self, *exc_info: object) -> None:
        self._lock.release()
