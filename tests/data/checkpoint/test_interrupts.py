"""Ctrl-C anywhere: a SIGINT raised at every line event of the engine's code during ``save``,
``restore``, ``wait_until_finished`` and ``close`` is never lost (the call raises
``KeyboardInterrupt``), leaves no lock or lease held, and the manager goes on: the next save
commits, the next restore returns (a closed manager's next ``close`` finishes and frees the
directory).

The interrupt is a real SIGINT (``signal.raise_signal``) sent by a tracer at the n-th line
event, for every n: it goes through whatever handler is installed at that instant, as a
Ctrl-C would. Checkpoints go to tmpfs when there is one (fsync is free there): the sweeps run
about 800 calls.
"""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
import torch
from helpers import assert_tree_equal

import alphatriangle.data.checkpoint as engine
from alphatriangle.data import CheckpointManager, CheckpointManagerOptions, KeepLatest
from alphatriangle.data.checkpoint import _interrupts
from alphatriangle.data.checkpoint.layout import step_dir_name
from alphatriangle.data.checkpoint.locking import try_take_step

ENGINE = str(Path(engine.__file__).parent)
OPTIONS = CheckpointManagerOptions(retention=KeepLatest(2), lock_timeout_s=0.0)
pytestmark = pytest.mark.slow


class _CtrlCAt:
    """Sends SIGINT at the ``at``-th line event of engine code on this thread (0: never),
    counting them all."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.count = 0
        self.fired = False

    def __call__(self, frame: FrameType, event: str, arg: Any) -> Any:
        if not frame.f_code.co_filename.startswith(ENGINE):
            return None
        return self._line

    def _line(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            self.count += 1
            if self.count == self.at:
                self.fired = True
                signal.raise_signal(signal.SIGINT)  # a Ctrl-C, right here
        return self._line


def _traced(call: Callable[[], Any], at: int) -> tuple[_CtrlCAt, bool]:
    """Run ``call`` with a Ctrl-C at line event ``at``; whether it raised KeyboardInterrupt."""
    tracer = _CtrlCAt(at)
    sys.settrace(tracer)
    try:
        call()
    except KeyboardInterrupt:
        return tracer, True
    finally:
        sys.settrace(None)
    return tracer, False


@pytest.fixture(autouse=True)
def _python_sigint() -> Iterator[None]:
    """Python's own SIGINT handler, whatever the runner installed."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture
def fast_dir(tmp_path: Path) -> Iterator[Path]:
    shm = Path("/dev/shm")
    if not shm.is_dir():
        yield tmp_path / "checkpoints"
        return
    base = Path(tempfile.mkdtemp(prefix="interrupts-", dir=shm))
    try:
        yield base / "checkpoints"
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _state(step: int) -> dict[str, Any]:
    return {"w": torch.full((4,), float(step)), "step": step, "tags": {"a"}}


def _on_a_thread(work: Callable[[], None], what: str) -> None:
    """Run ``work`` on another thread: a lock left held by the main thread hangs it."""
    errors: list[BaseException] = []
    done = threading.Event()

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # reported below, with its type
            errors.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(20), f"{what}: hangs (a lock is still held)"
    if errors:
        raise AssertionError(f"{what}: {errors[0]!r}") from errors[0]


def _assert_nothing_held(manager: CheckpointManager, what: str) -> None:
    assert _interrupts._active is None, f"{what}: a deferral was left in force"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, f"{what}: handler"
    if manager._writer is not None and not manager._closed:
        _on_a_thread(manager._writer.wait_idle, what)  # retention done: it takes steps too
    for step in manager.all_steps():  # a leaked reader lease would keep a step forever
        with try_take_step(manager.directory / step_dir_name(step)) as taken:
            assert taken, f"{what}: step {step} is still leased"


def _assert_usable(manager: CheckpointManager, step: int, what: str) -> None:
    _assert_nothing_held(manager, what)

    def save_and_restore() -> None:
        manager.wait_until_finished()
        handle = manager.save(step, _state(step))
        assert handle is not None
        handle.result(10)
        assert_tree_equal(manager.restore(step), _state(step))

    _on_a_thread(save_and_restore, what)


def _sweep(
    prepare: Callable[[int], Callable[[], Any]],
    after: Callable[[int, str], None],
) -> int:
    """Interrupt ``prepare(n)()`` at line event n for every n until a call ends before its
    n-th event; ``after`` checks the manager. Returns the number of calls interrupted."""
    interrupted = 0
    n = 1
    while True:
        call = prepare(n)
        tracer, raised = _traced(call, n)
        what = f"Ctrl-C at line event {n}"
        if tracer.fired:
            assert raised, f"{what}: the Ctrl-C was lost"
            interrupted += 1
        after(n, what)
        if not tracer.fired:
            return interrupted
        n += 1


@pytest.mark.parametrize("waiting", [False, True], ids=["slot free", "waiting for a slot"])
def test_ctrl_c_anywhere_in_save(fast_dir: Path, waiting: bool) -> None:
    manager = CheckpointManager(fast_dir, OPTIONS)
    manager.save(0, _state(0))  # placed once: later saves take the steady path
    steps = iter(range(1, 100_000, 3))
    current: list[int] = []

    def prepare(n: int) -> Callable[[], Any]:
        step = next(steps)
        current[:] = [step]
        if waiting:  # the one staging slot is taken: the save waits for it
            manager.save(step + 2, _state(step + 2))
        return lambda: manager.save(step, _state(step))

    def after(n: int, what: str) -> None:
        _assert_usable(manager, current[0] + 1, what)
        step = current[0]
        manager.wait_until_finished()  # retention after that save has run: no step goes now
        if step in manager.all_steps():  # committed whole, as saved
            assert_tree_equal(manager.restore(step), _state(step))

    assert _sweep(prepare, after) > 100
    manager.close()


def test_ctrl_c_anywhere_in_restore(fast_dir: Path) -> None:
    manager = CheckpointManager(fast_dir, OPTIONS)
    manager.save(0, _state(0))
    manager.wait_until_finished()
    steps = iter(range(1, 100_000))

    def after(n: int, what: str) -> None:
        _assert_usable(manager, next(steps), what)

    assert _sweep(lambda n: manager.restore, after) > 300
    manager.close()


def test_ctrl_c_anywhere_in_wait_until_finished(fast_dir: Path) -> None:
    manager = CheckpointManager(fast_dir, OPTIONS)
    steps = iter(range(0, 100_000, 2))
    current: list[int] = []

    def prepare(n: int) -> Callable[[], Any]:
        current[:] = [next(steps)]
        manager.save(current[0], _state(current[0]))  # in flight while it waits
        return manager.wait_until_finished

    def after(n: int, what: str) -> None:
        _assert_usable(manager, current[0] + 1, what)

    assert _sweep(prepare, after) > 20
    manager.close()


def test_ctrl_c_anywhere_in_close(fast_dir: Path) -> None:
    managers: list[CheckpointManager] = []

    def prepare(n: int) -> Callable[[], Any]:
        manager = CheckpointManager(fast_dir, OPTIONS)
        manager.save(n, _state(n))  # in flight: close waits for it
        managers[:] = [manager]
        return manager.close

    def after(n: int, what: str) -> None:
        manager = managers[0]
        _assert_nothing_held(manager, what)
        _on_a_thread(manager.close, f"{what}: close again")  # finishes what was cut short
        assert n in manager.all_steps(), f"{what}: the save in flight was lost"
        # The lock is free: a new writer opens at once (lock_timeout_s=0).
        _on_a_thread(lambda: CheckpointManager(fast_dir, OPTIONS).close(), f"{what}: reopen")

    assert _sweep(prepare, after) > 30
