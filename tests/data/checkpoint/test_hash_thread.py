"""The hashing thread of ``_hash_thread.py``: jobs in order on a pooled thread, their
failure raised by ``join``, the thread reused by the next user, its first job begun when
``until_begun`` returns."""

from __future__ import annotations

import threading
import time

import pytest

from alphatriangle.data.checkpoint import _hash_thread
from alphatriangle.data.checkpoint._hash_thread import HashThread


def _run(jobs: int) -> tuple[list[int], set[threading.Thread]]:
    """Run ``jobs`` jobs on one HashThread; the order they ran in and the threads they ran on."""
    order: list[int] = []
    threads: set[threading.Thread] = set()
    hashing = HashThread()
    try:
        for position in range(jobs):
            hashing.put(
                lambda p: (order.append(p), threads.add(threading.current_thread())), position
            )
    finally:
        hashing.join()
    return order, threads


def test_jobs_run_in_order_on_one_thread_that_the_next_user_reuses() -> None:
    order, first = _run(50)
    assert order == list(range(50))
    assert len(first) == 1 and threading.current_thread() not in first
    alive = set(threading.enumerate())
    _, second = _run(3)
    assert second <= alive  # a pooled thread, taken again: none started


def test_a_failed_job_is_raised_by_join_and_the_thread_still_serves() -> None:
    hashing = HashThread()
    ran: list[int] = []

    def fail() -> None:
        raise KeyError("broken")

    hashing.put(fail)
    hashing.put(ran.append, 1)  # later jobs still run
    with pytest.raises(KeyError, match="broken"):
        hashing.join()
    assert ran == [1]
    with pytest.raises(KeyError):
        hashing.join()  # again: the same failure, no hang
    with pytest.raises(RuntimeError, match="after join"):
        hashing.put(ran.append, 2)
    order, _ = _run(2)
    assert order == [0, 1]


def test_concurrent_users_get_threads_of_their_own_and_idle_ones_are_bounded() -> None:
    users = [HashThread() for _ in range(_hash_thread._IDLE_WORKERS + 3)]
    release = threading.Event()
    seen: list[set[int]] = [set() for _ in users]
    for user, threads in zip(users, seen, strict=True):
        user.put(release.wait, 10.0)
        user.put(lambda t: t.add(threading.get_ident()), threads)
    release.set()
    for user in users:
        user.join()
    assert len(set.union(*seen)) == len(users)  # no two users shared a thread
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        alive = [t for t in threading.enumerate() if t.ident in set.union(*seen)]
        if len(alive) <= _hash_thread._IDLE_WORKERS:
            break
        time.sleep(0.01)
    assert len(alive) <= _hash_thread._IDLE_WORKERS  # the rest ended


def test_a_pooled_thread_holds_nothing_of_a_finished_job() -> None:
    import weakref

    class Buffer:
        pass

    buffer = Buffer()
    gone = weakref.ref(buffer)
    hashing = HashThread()
    hashing.put(lambda b: None, buffer)
    hashing.join()
    del buffer
    assert gone() is None  # a mapped file's view kept alive would keep the file mapped


def test_until_begun_returns_once_the_thread_runs_the_first_job_not_when_it_ends() -> None:
    hashing = HashThread()
    release = threading.Event()
    try:
        hashing.put(release.wait, 10.0)
        assert not hashing.begun  # this thread held the GIL since: the job has not begun
        hashing.until_begun()
        assert hashing.begun and not hashing.done.is_set()
        hashing.until_begun()  # again: at once
    finally:
        release.set()
        hashing.join()
