"""Behaviours users bring from Orbax, Lightning and DCP, stated the way the peers' tests state
them (each test names the peer behaviour it follows or departs from)."""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
from helpers import assert_tree_equal, python, state_for_step
from pydantic import ValidationError

from alphatriangle.data import (
    CheckpointError,
    CheckpointManager,
    CheckpointManagerOptions,
    CheckpointNotFoundError,
    KeepAll,
    KeepBest,
    KeepLatest,
    SaveEvery,
    SaveInitial,
    SaveInterval,
    SaveOnSteps,
    SaveWhen,
    StepExistsError,
)
from alphatriangle.data.checkpoint.locking import reader_lease

ALL = CheckpointManagerOptions(retention=KeepAll())


def test_best_k_keeps_checkpoints_saved_without_the_metric(ckpt_dir: Path) -> None:
    # Orbax checkpoint_manager_test, keep_checkpoints_without_metrics (default True): steps
    # saved without metrics are never deleted by best-k retention.
    options = CheckpointManagerOptions(retention=KeepBest(1, metric="loss"))
    with CheckpointManager(ckpt_dir, options) as manager:
        for step in range(4):
            manager.save(step, {"s": step})
        manager.save(4, {"s": 4}, metrics={"loss": 1.0})
        manager.save(5, {"s": 5}, metrics={"loss": 2.0})
        manager.wait_until_finished()
        assert manager.all_steps() == [0, 1, 2, 3, 4, 5]  # 5 is the newest: protected
        manager.save(6, {"s": 6}, metrics={"loss": 3.0})
        manager.wait_until_finished()
        assert manager.all_steps() == [0, 1, 2, 3, 4, 6]
    strict = CheckpointManagerOptions(retention=KeepBest(1, "loss", keep_unranked=False))
    with CheckpointManager(ckpt_dir, strict) as manager:
        manager.save(7, {"s": 7}, metrics={"loss": 9.0})
        manager.wait_until_finished()
        assert manager.all_steps() == [4, 7]


def test_rollback_recipe_end_to_end(ckpt_dir: Path) -> None:
    # Orbax: restoring an older step and training on makes should_save refuse the later
    # steps silently; here the recipe is explicit: restore, delete the newer steps, go on.
    with CheckpointManager(ckpt_dir, ALL) as manager:
        for step in (4, 6, 8):
            manager.save(step, state_for_step(step))
        manager.wait_until_finished()
        state = manager.restore(4)
        assert_tree_equal(state, state_for_step(4))
        with pytest.raises(StepExistsError):
            manager.save(6, state_for_step(60))
        assert not manager.should_save(6)
        for newer in [s for s in manager.all_steps() if s > 4]:
            manager.delete(newer)
        assert manager.all_steps() == [4]
        assert manager.should_save(6)
        manager.save(6, state_for_step(60))
        manager.save(8, state_for_step(80))
        manager.wait_until_finished()
        assert_tree_equal(manager.restore(6), state_for_step(60))
    assert sorted(p.name for p in ckpt_dir.iterdir() if "step" in p.name) == [
        "step_000000004",
        "step_000000006",
        "step_000000008",
    ]


def test_delete_refuses_missing_in_flight_and_read_steps(ckpt_dir: Path) -> None:
    options = CheckpointManagerOptions(retention=KeepAll(), lock_timeout_s=0.3)
    with CheckpointManager(ckpt_dir, options) as manager:
        with pytest.raises(CheckpointNotFoundError):
            manager.delete(3)
        manager.save(1, {"w": torch.zeros(4)})
        manager.wait_until_finished()
        assert not manager.saving_in_progress()
        manager._catalog.begin_save(1)  # as a save of step 1 in flight would have it
        assert manager.saving_in_progress()
        with pytest.raises(StepExistsError, match="being saved"):
            manager.delete(1)
        manager._catalog.end_save(1)
        held, release = threading.Event(), threading.Event()

        def read_and_hold() -> None:
            with reader_lease(ckpt_dir / "step_000000001"):
                held.set()
                release.wait(10)

        reader = threading.Thread(target=read_and_hold)
        reader.start()
        assert held.wait(10)
        with pytest.raises(CheckpointError, match="readers held it"):
            manager.delete(1)
        release.set()
        reader.join()
        manager.delete(1)
        assert manager.all_steps() == []
    with (
        CheckpointManager(ckpt_dir, CheckpointManagerOptions(read_only=True)) as reader_only,
        pytest.raises(CheckpointError, match="read_only"),
    ):
        reader_only.delete(1)


@pytest.mark.slow
def test_every_waiter_and_the_next_save_see_a_real_write_failure(tmp_path: Path) -> None:
    # Orbax test_save_restore_with_concurrent_wait_until_finished: many threads wait at
    # once; here a write really fails (EFBIG under RLIMIT_FSIZE) and each of them is told.
    result = subprocess.run(
        [*python(), "waiters-disk-full", str(tmp_path / "ckpt")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen == {"waiter0": 27, "waiter1": 27, "waiter2": 27, "next_save": 27}


def test_a_step_folder_without_manifest_is_not_a_step(
    ckpt_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Orbax lists only finalized steps; an empty or half-copied folder must not become the
    # latest step, break restore, or be pruned.
    with CheckpointManager(ckpt_dir, CheckpointManagerOptions(retention=KeepLatest(1))) as m:
        m.save(1, state_for_step(1))
    (ckpt_dir / "step_000000009").mkdir()
    half = ckpt_dir / "step_000000010"
    half.mkdir()
    (half / "state.data").write_bytes(b"partial")
    with CheckpointManager(ckpt_dir, CheckpointManagerOptions(retention=KeepLatest(1))) as m:
        assert m.all_steps() == [1] and m.latest_step() == 1
        assert_tree_equal(m.restore(), state_for_step(1))
        m.save(2, state_for_step(2))
        m.save(3, state_for_step(3))
        m.wait_until_finished()
        assert m.all_steps() == [3]
    assert (ckpt_dir / "step_000000009").is_dir() and half.is_dir()  # left alone
    assert "step_000000009 has no manifest" in caplog.text


def test_read_only_managers_never_want_to_save(ckpt_dir: Path) -> None:
    # Orbax: should_save is False for a read-only manager.
    with CheckpointManager(ckpt_dir) as m:
        m.save(0, {"s": 0})
    with CheckpointManager(ckpt_dir, CheckpointManagerOptions(read_only=True)) as reader:
        assert not reader.should_save(5)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _saved(ckpt_dir: Path, policy: object, steps: range, clock: _Clock | None = None) -> list[int]:
    options = CheckpointManagerOptions(save_policy=policy, retention=KeepAll())  # type: ignore[arg-type]
    clock = clock or _Clock()
    with CheckpointManager(ckpt_dir, options, clock=clock) as manager:
        for step in steps:
            manager.save(step, {"s": step})
            clock.now += 10.0
        manager.wait_until_finished()
        return manager.all_steps()


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        # Orbax FixedIntervalPolicy / Lightning every_n_train_steps
        (SaveEvery(steps=4), [0, 4, 8]),
        # Orbax SpecificStepsPolicy
        (SaveOnSteps([3, 7, 42]), [3, 7]),
        # Orbax ContinuousCheckpointingPolicy(minimum_interval_secs) / Lightning
        # train_time_interval: 10 s pass per step, 25 s between saves
        (SaveInterval(seconds=25), [0, 3, 6, 9]),
        # Orbax InitialSavePolicy, composed like its AnySavePolicy
        (SaveInitial() | SaveEvery(steps=5), [0, 5]),
        (SaveWhen(lambda step: step in (2, 9)), [2, 9]),
        (SaveEvery(steps=2) & SaveWhen(lambda step: step > 5), [6, 8]),
    ],
    ids=["every", "on-steps", "interval", "initial", "when", "and"],
)
def test_save_policies(ckpt_dir: Path, policy: object, expected: list[int]) -> None:
    assert _saved(ckpt_dir, policy, range(10)) == expected


def test_save_initial_only_into_an_empty_directory(ckpt_dir: Path) -> None:
    assert _saved(ckpt_dir, SaveInitial(), range(5, 8)) == [5]
    assert _saved(ckpt_dir, SaveInitial(), range(8, 11)) == [5]  # not empty any more


def test_interval_counts_from_the_newest_step_after_reopening(ckpt_dir: Path) -> None:
    clock = _Clock()
    assert _saved(ckpt_dir, SaveInterval(seconds=25), range(2), clock) == [0]
    # The run resumes 20 s after step 0 was saved: step 2 is not due, step 3 (30 s) is.
    assert _saved(ckpt_dir, SaveInterval(seconds=25), range(2, 4), clock) == [0, 3]


def test_save_policy_and_interval_shorthand_exclude_each_other() -> None:
    with pytest.raises(ValidationError, match="not both"):
        CheckpointManagerOptions(save_policy=SaveEvery(steps=2), save_interval_steps=5)
    assert CheckpointManagerOptions(save_interval_steps=5).save_decision() == SaveEvery(5)
    with pytest.raises(ValueError, match=r"SaveEvery\.steps"):
        SaveEvery(steps=0)


def test_a_save_that_waits_for_the_previous_one_warns(
    ckpt_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with CheckpointManager(ckpt_dir, ALL) as manager:
        pool = manager._pool
        assert pool is not None
        held = pool.acquire(block=True)  # the one staging slot, as an unfinished save holds it
        assert held is not None
        threading.Timer(0.2, pool.release, args=(held,)).start()
        began = time.perf_counter()
        manager.save(1, {"w": torch.ones(3)})
        assert time.perf_counter() - began >= 0.15
    assert "save of step 1 waited" in caplog.text
    assert "checkpointing is the bottleneck" in caplog.text
