"""1.0.0's path getters naming step directories, of this run and of another."""

from __future__ import annotations

from pathlib import Path

from dm_support import Parts, make_persist, make_train, save_step

from alphatriangle.data import DataManager


def test_paths_and_previous_runs_as_1_0_0_named_them(tmp_path: Path) -> None:
    first = make_train("train_20260101_000000", CHECKPOINT_SAVE_FREQ_STEPS=5)
    persist = make_persist(tmp_path, BUFFER_SAVE_FREQ_STEPS=10, KEEP_LATEST_CHECKPOINTS=5)
    parts = Parts(first)
    parts.fill(10, seed=2)
    with DataManager(persist, first) as dm:
        for step in (5, 10, 15):
            save_step(dm, parts, step)
        dm.wait_until_finished()
        directory = dm.checkpoint_dir
        assert dm.get_checkpoint_path() == directory / "step_000000015"
        assert dm.get_checkpoint_path(step=10) == directory / "step_000000010"
        # A step that does not exist: the would-be path, as 1.0.0 returned its file's.
        assert dm.get_checkpoint_path(step=999) == directory / "step_000000999"
        assert not dm.get_checkpoint_path(step=999).exists()
        assert dm.get_buffer_path(step=999) == directory / "step_000000999"
        # is_latest wins over step (1.0.0 returned latest.pkl); is_final names the step
        # with one, the newest without.
        assert dm.get_checkpoint_path(step=5, is_latest=True) == directory / "step_000000015"
        assert dm.get_checkpoint_path(step=5, is_final=True) == directory / "step_000000005"
        assert dm.get_checkpoint_path(is_final=True) == directory / "step_000000015"
        assert dm.get_buffer_path() == directory / "step_000000010"
        assert dm.get_buffer_path(step=5, is_final=True) == directory / "step_000000005"
    later = make_train("train_20260102_000000")
    with DataManager(persist, later) as dm:
        found = dm.find_latest_run_dir(later.RUN_NAME)
        assert found == "train_20260101_000000" and isinstance(found, str)
        assert dm.find_latest_run_dir("train_20260101_000000") is None  # no other with steps
        assert dm.get_checkpoint_path(run_name=found) == directory / "step_000000015"
        assert dm.get_checkpoint_path() == dm.checkpoint_dir  # nothing saved in this run
