"""The DataManager with the real parts: a save returns once staged and resumes whole, what
is due at each step, final saves, the best step, and a bit-exact resume of a training
loop."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from dm_support import Parts, make_persist, make_train, save_step
from helpers import assert_tree_equal

from alphatriangle.config import EnvConfig, ModelConfig
from alphatriangle.data import DataManager, LoadedTrainingState
from alphatriangle.rl.core import ExperienceBuffer


def test_save_returns_once_staged_and_resume_restores_everything(tmp_path: Path) -> None:
    train = make_train()
    parts = Parts(train)
    parts.fill(40, seed=1)
    parts.train_step(0)
    with DataManager(make_persist(tmp_path), train) as dm:
        assert dm.load_initial_state() == LoadedTrainingState()  # fresh
        handle = save_step(dm, parts, 10, is_final=True, user_data={"note": "x"})
        assert handle is not None and handle.staged.done()  # returned once staged
        step_dir = handle.result(timeout=60)
        assert step_dir.name == "step_000000010"
        assert save_step(dm, parts, 11) is None  # not due
    again = Parts(train, seed=5)
    with DataManager(make_persist(tmp_path), train) as dm:
        loaded = dm.load_initial_state()
        counters = DataManager.apply_loaded_state(
            loaded, again.nn, again.optimizer, buffer=again.buffer
        )
    assert counters == (10, 20, 100)
    assert loaded.checkpoint_data is not None and loaded.checkpoint_data.user_data == {"note": "x"}
    assert_tree_equal(again.nn.state_dict(), parts.nn.state_dict())
    assert_tree_equal(again.optimizer.state_dict(), parts.optimizer.state_dict())
    assert_tree_equal(
        {k: v for k, v in again.buffer.state_dict().items() if k != "rng"},
        {k: v for k, v in parts.buffer.state_dict().items() if k != "rng"},
    )


def test_checkpoint_and_buffer_frequencies_and_retention(tmp_path: Path) -> None:
    train = make_train(CHECKPOINT_SAVE_FREQ_STEPS=5)
    persist = make_persist(tmp_path, BUFFER_SAVE_FREQ_STEPS=20, KEEP_LATEST_CHECKPOINTS=2)
    parts = Parts(train)
    parts.fill(20, seed=2)
    with DataManager(persist, train) as dm:
        for step in range(1, 31):
            save_step(dm, parts, step, is_best=step == 10)
        dm.wait_until_finished()
        steps = dm.manager.all_steps()
        # 25, 30: the newest; 10: the best; 20: the newest holding the buffer.
        assert steps == [10, 20, 25, 30]
        assert dm.get_buffer_path().name == "step_000000020"
        assert dm.get_checkpoint_path(is_best=True).name == "step_000000010"
        assert dm.get_checkpoint_path().name == "step_000000030"


def test_a_final_save_completes_a_step_just_saved_without_the_buffer(tmp_path: Path) -> None:
    train = make_train(CHECKPOINT_SAVE_FREQ_STEPS=5)
    persist = make_persist(tmp_path, BUFFER_SAVE_FREQ_STEPS=1000)
    parts = Parts(train)
    parts.fill(20, seed=3)
    with DataManager(persist, train) as dm:
        assert save_step(dm, parts, 5) is not None  # the checkpoint is due, the buffer is not
        parts.fill(3, seed=4)  # what the final save must keep
        handle = save_step(dm, parts, 5, is_final=True)  # SIGTERM right after that save
        assert handle is not None
        handle.result(timeout=60)
        assert set(dm.manager.metadata(5)["items"]) == {"checkpoint", "buffer"}
        assert save_step(dm, parts, 5, is_final=True) is None  # whole now: nothing more
    with DataManager(persist, train) as dm:
        loaded = dm.load_initial_state()
    assert loaded.buffer_data is not None and loaded.buffer_data.buffer_state is not None
    assert len(loaded.buffer_data.buffer_state["columns"]["grid"]) == 23


def test_resume_is_bit_exact(tmp_path: Path) -> None:
    """N steps, save, resume in new objects, N steps == 2N steps unbroken."""
    train = make_train()

    def run(parts: Parts, steps: range) -> list[float]:
        return [parts.train_step(step) for step in steps]

    torch.manual_seed(123)
    unbroken = Parts(train)
    unbroken.fill(40, seed=9)
    np.random.seed(7)
    expected = run(unbroken, range(10))

    torch.manual_seed(123)
    first = Parts(train)
    first.fill(40, seed=9)
    np.random.seed(7)
    losses = run(first, range(5))
    with DataManager(make_persist(tmp_path), train) as dm:
        save_step(dm, first, 5, is_final=True)
    torch.manual_seed(999)  # whatever the new process does first is undone by the resume
    second = Parts(train, seed=77)
    with DataManager(make_persist(tmp_path), train) as dm:
        DataManager.apply_loaded_state(
            dm.load_initial_state(), second.nn, second.optimizer, buffer=second.buffer
        )
    losses += run(second, range(5, 10))
    assert losses == expected
    assert_tree_equal(second.nn.state_dict(), unbroken.nn.state_dict())


def test_buffer_list_gives_the_experiences_lazily(tmp_path: Path) -> None:
    from alphatriangle.data.schemas import LazyExperienceList

    train = make_train()
    parts = Parts(train)
    parts.fill(70, seed=5)  # more than the capacity of 64: the ring has wrapped
    with DataManager(make_persist(tmp_path), train) as dm:
        save_step(dm, parts, 5, is_final=True)
    with DataManager(make_persist(tmp_path), train) as dm:
        loaded = dm.load_initial_state()
    assert loaded.buffer_data is not None
    experiences = loaded.buffer_data.buffer_list
    assert isinstance(experiences, LazyExperienceList)
    again = Parts(train, seed=3)
    DataManager.apply_loaded_state(loaded, again.nn, again.optimizer, buffer=again.buffer)
    assert list.__len__(experiences) == 0  # apply_loaded_state read the columns alone
    expected = parts.buffer.to_experiences()
    assert len(experiences) == 64 and len(expected) == 64
    for (state, policy, value), (want_state, want_policy, want_value) in zip(
        experiences, expected, strict=True
    ):
        assert value == want_value and policy == want_policy
        assert np.array_equal(state["grid"], want_state["grid"])
        assert np.array_equal(state["other_features"], want_state["other_features"])
    assert experiences[0] is experiences[0]  # converted once, then kept
    joined = [] + experiences  # noqa: RUF005 - list.__add__ with the lazy list on the right
    assert len(joined) == 64 and joined[-1] is experiences[-1]
    restored = ExperienceBuffer(train, EnvConfig(), ModelConfig(), seed=0)
    restored.add_batch(experiences)  # 1.0.0 code's way of refilling its buffer
    assert [v for _, _, v in restored.to_experiences()] == [v for _, _, v in expected]


def test_the_best_checkpoint_survives_retention(tmp_path: Path, caplog: Any) -> None:
    train = make_train(CHECKPOINT_SAVE_FREQ_STEPS=5)
    persist = make_persist(
        tmp_path,
        SAVE_BUFFER=False,
        KEEP_LATEST_CHECKPOINTS=2,
        KEEP_BEST_CHECKPOINTS=1,
        BEST_METRIC="loss",
        BEST_MODE="min",
    )
    parts = Parts(train)
    with DataManager(persist, train) as dm:
        for step, loss in zip((5, 10, 15, 20, 25), (0.01, 0.5, 0.6, 0.7, 0.8), strict=True):
            save_step(dm, parts, step, metrics={"loss": loss})
        dm.wait_until_finished()
        assert dm.manager.all_steps() == [5, 20, 25]  # the best, and the 2 newest
        assert dm.best_step() == 5
        assert dm.get_checkpoint_path(is_best=True).name == "step_000000005"
        # 1.0.0's flag: a step saved with is_best=True is the best, and kept.
        save_step(dm, parts, 30, is_best=True, metrics={"loss": 0.9})
        for step in (35, 40):
            save_step(dm, parts, step, metrics={"loss": 0.95})
        dm.wait_until_finished()
        assert dm.manager.all_steps() == [5, 30, 35, 40]
        assert dm.best_step() == 30
        assert dm.get_checkpoint_path(is_best=True).name == "step_000000030"
    assert "without the metric" not in caplog.text
    # Another run's best, read from its directory.
    with DataManager(persist, make_train("train_20260102_000000")) as other:
        assert other.best_step(train.RUN_NAME) == 30
        path = other.get_checkpoint_path(run_name=train.RUN_NAME, is_best=True)
        assert path == dm.checkpoint_dir / "step_000000030"


def test_a_best_metric_no_save_logs_warns_once(tmp_path: Path, caplog: Any) -> None:
    train = make_train(CHECKPOINT_SAVE_FREQ_STEPS=5)
    persist = make_persist(tmp_path, SAVE_BUFFER=False, BEST_METRIC="val_loss")
    parts = Parts(train)
    with DataManager(persist, train) as dm:
        for step in (5, 10, 15):
            save_step(dm, parts, step, metrics={"loss": 0.5})
        dm.wait_until_finished()
        assert dm.best_step() is None
        assert dm.get_checkpoint_path(is_best=True) == dm.checkpoint_dir  # no best: no step
    warnings = [r for r in caplog.records if "without the metric 'val_loss'" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "step 5" in warnings[0].getMessage()


def test_a_buffer_only_step_is_never_the_best_checkpoint(tmp_path: Path) -> None:
    train = make_train(CHECKPOINT_SAVE_FREQ_STEPS=10)
    persist = make_persist(tmp_path, BUFFER_SAVE_FREQ_STEPS=5, KEEP_LATEST_CHECKPOINTS=1)
    parts = Parts(train)
    parts.fill(10, seed=1)
    with DataManager(persist, train) as dm:
        save_step(dm, parts, 10, metrics={"loss": 0.5})  # checkpoint and buffer
        save_step(dm, parts, 15, metrics={"loss": 0.1})  # the buffer alone: not ranked
        dm.wait_until_finished()
        assert "loss" not in dm.manager.metadata(15)["metrics"]
        save_step(dm, parts, 20, metrics={"loss": 0.9})
        dm.wait_until_finished()
        assert dm.best_step() == 10 and dm.manager.all_steps() == [10, 20]
