"""The resume rules, each with real runs: an explicit path, this run, a new machine from the
MLflow run, the newest previous run (ours or 1.0.0's), a fresh start; corrupt steps skipped
loudly and never a silent fresh start."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
from dm_support import LEGACY_RUN, Parts, make_persist, make_train, save_step
from helpers import assert_tree_equal

from alphatriangle.config import PersistenceConfig
from alphatriangle.data import (
    CheckpointCorruptError,
    DataManager,
    LoadedTrainingState,
    resume_rules,
)


def test_resume_rules_explicit_path_and_previous_run(tmp_path: Path, caplog: Any) -> None:
    caplog.set_level(logging.INFO)
    first = make_train("train_20260101_000000")
    parts = Parts(first)
    parts.fill(20, seed=3)
    with DataManager(make_persist(tmp_path), first) as dm:
        save_step(dm, parts, 5, is_final=True)
    # A later run resumes from the newest previous run, by its timestamp.
    later = make_train("train_20260102_000000")
    with DataManager(make_persist(tmp_path), later) as dm:
        loaded = dm.load_initial_state()
        assert loaded.checkpoint_data is not None and loaded.checkpoint_data.global_step == 5
        assert loaded.buffer_data is not None and loaded.buffer_data.buffer_state is not None
    assert "resuming from run train_20260101_000000, step 5" in caplog.text
    # An explicit step directory wins over everything.
    step_dir = tmp_path / "runs" / "train_20260101_000000" / "checkpoints" / "step_000000005"
    explicit = make_train("train_20260103_000000", LOAD_CHECKPOINT_PATH=str(step_dir))
    with DataManager(make_persist(tmp_path), explicit) as dm:
        loaded = dm.load_initial_state()
        assert loaded.checkpoint_data is not None and loaded.checkpoint_data.global_step == 5
    no_auto = make_train("train_20260104_000000", AUTO_RESUME_LATEST=False)
    with DataManager(make_persist(tmp_path), no_auto) as dm:
        assert dm.load_initial_state() == LoadedTrainingState()
    assert "starting fresh" in caplog.text


def test_a_1_0_0_run_resumes_and_continues_in_the_new_format(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    shutil.copytree(LEGACY_RUN, runs / LEGACY_RUN.name)
    train = make_train("train_20260101_000000")
    persist = make_persist(tmp_path)
    with DataManager(persist, train) as dm:
        loaded = dm.load_initial_state()
        assert loaded.checkpoint_data is not None
        assert loaded.checkpoint_data.global_step == 2500
        assert loaded.buffer_data is not None and len(loaded.buffer_data.buffer_list) == 200
        parts = Parts(train, channels=2)  # the imitation's grids have 2 channels
        DataManager.apply_loaded_state(
            LoadedTrainingState(buffer_data=loaded.buffer_data),
            parts.nn,
            parts.optimizer,
            buffer=parts.buffer,
        )
        assert len(parts.buffer) == 64  # the newest 200 experiences, in a buffer of 64
        handle = save_step(dm, parts, 2501, is_final=True)
        assert handle is not None and handle.result(60).name == "step_000002501"
    explicit = make_train(
        "train_20260102_000000",
        LOAD_CHECKPOINT_PATH=str(runs / LEGACY_RUN.name / "checkpoints" / "latest.pkl"),
    )
    with DataManager(persist, explicit) as dm:
        assert dm.load_initial_state().checkpoint_data.global_step == 2500  # type: ignore[union-attr]


def test_corrupt_steps_fall_back_loudly_and_all_corrupt_raises(tmp_path: Path, caplog: Any) -> None:
    train = make_train()
    parts = Parts(train)
    parts.fill(20, seed=4)
    with DataManager(make_persist(tmp_path, KEEP_LATEST_CHECKPOINTS=5), train) as dm:
        for step in (5, 10):
            save_step(dm, parts, step, is_final=True)
    checkpoints = tmp_path / "runs" / train.RUN_NAME / "checkpoints"
    newest = checkpoints / "step_000000010" / "checkpoint.data"
    newest.write_bytes(newest.read_bytes()[:-10])  # truncated
    with DataManager(make_persist(tmp_path), train) as dm:
        loaded = dm.load_initial_state()
        assert loaded.checkpoint_data is not None and loaded.checkpoint_data.global_step == 5
    assert "skipping corrupt step 10" in caplog.text
    older = checkpoints / "step_000000005" / "checkpoint.data"
    raw = bytearray(older.read_bytes())
    raw[100] ^= 0xFF
    older.write_bytes(bytes(raw))
    with DataManager(make_persist(tmp_path), train) as dm, pytest.raises(CheckpointCorruptError):
        dm.load_initial_state()  # never a silent fresh start


@pytest.mark.slow
def test_a_new_machine_resumes_from_the_mlflow_run(tmp_path: Path) -> None:
    train = make_train()
    parts = Parts(train)
    parts.fill(20, seed=6)
    first = PersistenceConfig(ROOT_DATA_DIR=str(tmp_path / "first"))
    with DataManager(first, train) as dm:
        save_step(dm, parts, 5, is_final=True)
        assert dm.manager.wait_for_uploads(timeout=60)
    # Another machine: its own data root, the same MLflow store and run name.
    elsewhere = PersistenceConfig(
        ROOT_DATA_DIR=str(tmp_path / "elsewhere"),
        MLFLOW_TRACKING_URI_OVERRIDE=first.MLFLOW_TRACKING_URI,
    )
    with DataManager(elsewhere, train) as dm:
        loaded = dm.load_initial_state()
    assert loaded.checkpoint_data is not None and loaded.checkpoint_data.global_step == 5
    assert_tree_equal(loaded.checkpoint_data.model_state_dict, dict(parts.nn.state_dict()))
    assert loaded.buffer_data is not None and loaded.buffer_data.buffer_state is not None


def test_help_of_load_initial_state_states_the_resume_rules() -> None:
    import pydoc

    text = pydoc.render_doc(DataManager.load_initial_state, renderer=pydoc.plaintext)
    for rule in (
        "LOAD_CHECKPOINT_PATH",
        "newest committed step",
        "MLflow",
        "AUTO_RESUME_LATEST",
        "fresh start",
        "never a silent fresh start",
    ):
        assert rule in text, rule


@pytest.mark.slow
def test_mlflow_out_of_reach_is_a_warning_and_the_rules_go_on(
    tmp_path: Path, caplog: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(resume_rules, "REMOTE_CHECK_S", 1.0)  # a refused port answers no better
    first = make_train("train_20260101_000000")
    parts = Parts(first)
    with DataManager(make_persist(tmp_path, SAVE_BUFFER=False), first) as dm:
        save_step(dm, parts, 5, is_final=True)
    unreachable = PersistenceConfig(
        ROOT_DATA_DIR=str(tmp_path), MLFLOW_TRACKING_URI_OVERRIDE="http://127.0.0.1:9"
    )
    with DataManager(unreachable, make_train("train_20260102_000000")) as dm:
        loaded = dm.load_initial_state()
    assert loaded.checkpoint_data is not None and loaded.checkpoint_data.global_step == 5
    assert "cannot check MLflow for checkpoints of run train_20260102_000000" in caplog.text
    assert "resuming from run train_20260101_000000, step 5" in caplog.text
