"""The DataManager's replay buffer is saved incrementally without any code of the user's: a
save after a few new experiences shares the rest of the buffer with the previous step."""

from __future__ import annotations

from pathlib import Path

from dm_support import Parts, make_persist, make_train, save_step
from helpers import assert_tree_equal
from typer.testing import CliRunner

from alphatriangle.cli import app
from alphatriangle.config import PersistenceConfig, TrainConfig
from alphatriangle.data import DataManager
from alphatriangle.data.checkpoint import step_usage


def _assert_resumes_exactly(persist: PersistenceConfig, train: TrainConfig, parts: Parts) -> None:
    """A fresh set of parts resumed from the run holds the saved buffer, row for row."""
    again = Parts(train, seed=5)
    with DataManager(persist, train) as dm:
        loaded = dm.load_initial_state()
        DataManager.apply_loaded_state(loaded, again.nn, again.optimizer, buffer=again.buffer)
    assert_tree_equal(
        {k: v for k, v in again.buffer.state_dict().items() if k != "rng"},
        {k: v for k, v in parts.buffer.state_dict().items() if k != "rng"},
    )


def test_a_buffer_save_writes_what_changed_and_resumes_exactly(tmp_path: Path) -> None:
    train = make_train(BUFFER_CAPACITY=10_000, CHECKPOINT_SAVE_FREQ_STEPS=5)
    persist = make_persist(tmp_path, BUFFER_SAVE_FREQ_STEPS=5, KEEP_LATEST_CHECKPOINTS=2)
    parts = Parts(train)
    parts.fill(10_000, seed=1)  # full: about 20 MB of rows, about eighty parts
    with DataManager(persist, train) as dm:
        first = save_step(dm, parts, 5).result(timeout=60)
        for step in range(6, 10):
            parts.train_step(step)  # new experiences and priority updates
        second = save_step(dm, parts, 10).result(timeout=60)
        dm.wait_until_finished()
    buffer_parts = sorted(p.name for p in second.iterdir() if p.name.startswith("buffer.data."))
    assert len(buffer_parts) >= 20 and not (second / "buffer.data").exists()
    assert (second / "checkpoint.data").is_file()  # the network is written whole
    linked = [name for name in buffer_parts if (second / name).stat().st_nlink > 1]
    written = sum((second / name).stat().st_size for name in set(buffer_parts) - set(linked))
    total = sum((second / name).stat().st_size for name in buffer_parts)
    assert written < 0.1 * total  # the parts of the new rows and of the priorities updated
    assert (first / linked[0]).stat().st_ino == (second / linked[0]).stat().st_ino
    own, shared = step_usage(second)
    assert own < 0.3 * (own + shared)
    listed = CliRunner().invoke(app, ["ckpt", "list", str(second.parent)])
    assert listed.exit_code == 0, listed.output
    line = next(line for line in listed.output.splitlines() if line.split()[:1] == ["10"])
    assert f"{own / 1e6:.1f} MB own" in line and f"{shared / 1e6:.1f} MB shared" in line
    _assert_resumes_exactly(persist, train, parts)


def test_incremental_buffer_saves_can_be_turned_off(tmp_path: Path) -> None:
    train = make_train(BUFFER_CAPACITY=2_000, CHECKPOINT_SAVE_FREQ_STEPS=5)
    persist = make_persist(tmp_path, BUFFER_SAVE_FREQ_STEPS=5, INCREMENTAL_BUFFER_SAVES=False)
    parts = Parts(train)
    parts.fill(2_000, seed=2)
    with DataManager(persist, train) as dm:
        save_step(dm, parts, 5).result(timeout=60)
        parts.train_step(6)
        second = save_step(dm, parts, 10).result(timeout=60)
        dm.wait_until_finished()
    assert (second / "buffer.data").is_file()  # whole, as every item without parts
    assert not list(second.glob("buffer.data.*")) and step_usage(second)[1] == 0
    _assert_resumes_exactly(persist, train, parts)
