"""The DataManager's save schedule: each item due by its own policy and context, and the
engine's save policy answering as the schedule does."""

from __future__ import annotations

from pathlib import Path

from dm_support import Parts, make_persist, make_train, save_step
from hypothesis import given
from hypothesis import strategies as st

from alphatriangle.config import PersistenceConfig
from alphatriangle.data import DataManager, SaveContext, SaveEvery, SaveInterval
from alphatriangle.data.save_schedule import SaveSchedule


def test_checkpoints_are_due_by_steps_or_by_wall_time(tmp_path: Path) -> None:
    now = [1000.0]
    train = make_train(CHECKPOINT_SAVE_FREQ_STEPS=1000, CHECKPOINT_SAVE_FREQ_SECONDS=60.0)
    parts = Parts(train)
    persist = make_persist(tmp_path, SAVE_BUFFER=False, KEEP_LATEST_CHECKPOINTS=10)
    with DataManager(persist, train, clock=lambda: now[0]) as dm:
        for step, at in ((1, 1010.0), (2, 1061.0), (3, 1070.0), (4, 1125.0), (1000, 1130.0)):
            now[0] = at
            save_step(dm, parts, step)
        assert save_step(dm, parts, 1000, is_final=True) is None  # saved already: nothing more
        dm.wait_until_finished()
        assert dm.manager.all_steps() == [2, 4, 1000]


def _schedule(now: list[float]) -> SaveSchedule:
    return SaveSchedule(
        {"checkpoint": SaveEvery(1000) | SaveInterval(60.0), "buffer": SaveEvery(5)},
        clock=lambda: now[0],
    )


def test_each_item_counts_from_its_own_last_save() -> None:
    now = [0.0]
    schedule = _schedule(now)
    now[0] = 30.0
    assert schedule.due_items(5) == {"buffer"}
    schedule.saved(5, {"buffer"})
    now[0] = 61.0  # 61 s after opening: a buffer-only save does not restart the checkpoint's
    assert schedule.due_items(6) == {"checkpoint"}
    schedule.saved(6, {"checkpoint"})
    now[0] = 100.0
    assert schedule.due_items(7) == frozenset()
    assert schedule.due_items(10) == {"buffer"}
    now[0] = 121.0
    assert schedule.due_items(1000) == {"checkpoint", "buffer"}


def test_the_engine_policy_answers_the_decision_taken() -> None:
    now = [0.0]
    schedule = _schedule(now)
    policy = schedule.engine_policy()
    context = SaveContext(step=3, now=0.0, last_step=None, last_time=None)
    assert not policy.should_save(context)  # nothing due at step 3, 0 s after opening
    now[0] = 60.0
    assert schedule.due_items(3) == {"checkpoint"}
    now[0] = 59.0  # the wall clock set back between the decision and the engine's look
    assert policy.should_save(context)
    assert not policy.should_save(SaveContext(step=4, now=59.0, last_step=None, last_time=None))


def test_the_configs_give_each_item_its_policy(tmp_path: Path) -> None:
    clock = lambda: 0.0  # noqa: E731
    train = make_train(CHECKPOINT_SAVE_FREQ_STEPS=7)
    schedule = SaveSchedule.from_configs(
        train, make_persist(Path(), BUFFER_SAVE_FREQ_STEPS=3), clock
    )
    assert schedule.policies == {"checkpoint": SaveEvery(7), "buffer": SaveEvery(3)}
    timed = make_train(CHECKPOINT_SAVE_FREQ_STEPS=7, CHECKPOINT_SAVE_FREQ_SECONDS=9.0)
    schedule = SaveSchedule.from_configs(timed, make_persist(Path(), SAVE_BUFFER=False), clock)
    assert schedule.policies == {"checkpoint": SaveEvery(7) | SaveInterval(9.0)}


def test_the_manager_should_save_as_the_data_manager_would(tmp_path: Path) -> None:
    now = [1000.0]
    train = make_train(CHECKPOINT_SAVE_FREQ_STEPS=10)
    persist = make_persist(tmp_path, BUFFER_SAVE_FREQ_STEPS=4)
    parts = Parts(train)
    parts.fill(10, seed=1)
    with DataManager(persist, train, clock=lambda: now[0]) as dm:
        assert [s for s in range(1, 13) if dm.manager.should_save(s)] == [4, 8, 10, 12]
        assert save_step(dm, parts, 5) is None
        handle = save_step(dm, parts, 8)  # the buffer alone
        assert handle is not None
        handle.result(timeout=60)
        assert dm.manager.metadata(8)["items"] == ["buffer"]
        assert not dm.manager.should_save(8)  # committed


def test_a_resumed_run_counts_wall_time_from_its_opening(tmp_path: Path) -> None:
    now = [1000.0]
    train = make_train(CHECKPOINT_SAVE_FREQ_STEPS=1000, CHECKPOINT_SAVE_FREQ_SECONDS=60.0)
    persist = make_persist(tmp_path, SAVE_BUFFER=False)
    parts = Parts(train)
    with DataManager(persist, train, clock=lambda: now[0]) as dm:
        assert save_step(dm, parts, 5, is_final=True) is not None
    now[0] = 2000.0  # reopened long after the newest step
    with DataManager(persist, train, clock=lambda: now[0]) as dm:
        now[0] = 2010.0
        assert save_step(dm, parts, 6) is None
        now[0] = 2061.0
        assert save_step(dm, parts, 7) is not None


@given(
    every=st.integers(1, 6),
    seconds=st.none() | st.floats(1.0, 50.0),
    buffer_every=st.integers(1, 6),
    moves=st.lists(st.tuples(st.integers(1, 3), st.floats(0.0, 30.0), st.booleans()), max_size=40),
)
def test_each_decision_is_what_the_configs_say(
    every: int,
    seconds: float | None,
    buffer_every: int,
    moves: list[tuple[int, float, bool]],
) -> None:
    """Against a plain model of the rules: the checkpoint when the step is a multiple of
    ``every`` or ``seconds`` passed since the last checkpoint saved (or the opening), the
    buffer when the step is a multiple of ``buffer_every``; a save may be dropped (the step
    was saved already, the queue was full) and then counts for nothing."""
    now = [0.0]
    train = make_train(CHECKPOINT_SAVE_FREQ_STEPS=every, CHECKPOINT_SAVE_FREQ_SECONDS=seconds)
    persist = PersistenceConfig(BUFFER_SAVE_FREQ_STEPS=buffer_every, MLFLOW_SYNC=False)
    schedule = SaveSchedule.from_configs(train, persist, clock=lambda: now[0])
    policy = schedule.engine_policy()
    step, last_checkpoint = 0, 0.0
    for advance, elapsed, written in moves:
        step, now[0] = step + advance, now[0] + elapsed
        checkpoint = step % every == 0 or (
            seconds is not None and now[0] - last_checkpoint >= seconds
        )
        expected = {"checkpoint"} if checkpoint else set()
        expected |= {"buffer"} if step % buffer_every == 0 else set()
        due = schedule.due_items(step)
        assert due == expected
        assert policy.should_save(SaveContext(step, now[0], None, None)) == bool(expected)
        if written and due:
            schedule.saved(step, set(due))
            last_checkpoint = now[0] if checkpoint else last_checkpoint
