"""Incremental saves: data files as parts, parts equal to the previous step's hard-linked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import assert_tree_equal

from alphatriangle.data import (
    CheckpointCorruptError,
    CheckpointManager,
    CheckpointManagerOptions,
    CheckpointSignatureError,
    KeepAll,
    KeepLatest,
    MlflowSyncOptions,
)
from alphatriangle.data.checkpoint import step_usage

ROWS = 4096  # 4096 rows of 1 KiB: a column of 4 MiB, packed in sixteen 256 KiB parts


class Buffer:
    """A ring of rows and its priorities, as a replay buffer's state lays them out."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.rows = self.rng.random((ROWS, 256), dtype=np.float32)
        self.priorities = self.rng.random(ROWS)
        self.cursor = 0

    def add(self, count: int) -> None:
        slots = (self.cursor + np.arange(count)) % ROWS
        self.rows[slots] = self.rng.random((count, 256), dtype=np.float32)
        self.cursor = int((self.cursor + count) % ROWS)

    def update(self, count: int) -> None:
        self.priorities[self.rng.integers(0, ROWS, count)] = self.rng.random(count)

    def state(self) -> dict[str, Any]:
        return {
            "rows": self.rows.copy(),
            "priorities": torch.from_numpy(self.priorities.copy()),
            "cursor": self.cursor,
        }


def _step_dir(directory: Path, step: int) -> Path:
    return directory / f"step_{step:09d}"


def _options(**kwargs: Any) -> CheckpointManagerOptions:
    return CheckpointManagerOptions(incremental=True, **kwargs)


def _save_some(manager: CheckpointManager, buffer: Buffer, steps: range) -> dict[int, Any]:
    saved = {}
    for step in steps:
        saved[step] = buffer.state()
        manager.save(step, saved[step])
        buffer.add(50)
        buffer.update(16)
    manager.wait_until_finished()
    return saved


def test_a_save_writes_what_changed_and_each_step_restores_on_its_own(tmp_path: Path) -> None:
    buffer = Buffer()
    with CheckpointManager(tmp_path, _options(retention=KeepLatest(3))) as manager:
        saved = _save_some(manager, buffer, range(1, 7))
        assert manager.all_steps() == [4, 5, 6]
        first_total = sum(step_usage(_step_dir(tmp_path, 4)))
        for step in (5, 6):
            own, shared = step_usage(_step_dir(tmp_path, step))
            # 50 new rows and 16 priorities: three parts of seventeen, and the small files
            assert own < 0.2 * first_total and shared > 0.8 * first_total
        for step in (4, 5, 6):
            assert_tree_equal(manager.restore(step), saved[step])
            selected = manager.restore(step, select=["rows"])
            np.testing.assert_array_equal(selected["rows"], saved[step]["rows"])
            target = {
                "rows": np.zeros((ROWS, 256), np.float32),
                "priorities": torch.zeros(ROWS, dtype=torch.float64),
                "cursor": 0,
            }
            manager.restore(step, target=target)
            assert_tree_equal(target, saved[step])
            manager.verify(step)
        manager.delete(5)
        manager.delete(4)
        assert_tree_equal(manager.restore(6), saved[6])
    with CheckpointManager(tmp_path, _options(restore_mode="copy", read_only=True)) as reader:
        assert_tree_equal(reader.restore(6), saved[6])


def test_large_arrays_start_where_their_parts_do(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    column = rng.random((16 << 20) // 4, dtype=np.float32)  # 16 MiB: parts of 512 KiB
    state = {"head": np.arange(300), "column": column, "tail": torch.arange(7.0)}
    with CheckpointManager(tmp_path, _options(retention=KeepAll())) as manager:
        manager.save(1, state)
        column[100_000:100_050] = -1.0  # 200 bytes inside one part
        state["tail"] += 1
        manager.save(2, state)
        manager.wait_until_finished()
        files = manager.metadata(2)["files"]
        index = json.loads((_step_dir(tmp_path, 2) / "state.index.json").read_bytes())
        offset = next(a["offset"] for a in index["arrays"] if a["nbytes"] == column.nbytes)
        assert offset % (512 << 10) == 0
        sizes = [files[name]["size"] for name in sorted(files) if ".data." in name]
        assert sizes.count(512 << 10) == 32
        own, shared = step_usage(_step_dir(tmp_path, 2))
        assert shared >= 31 * (512 << 10) and own < 3 * (512 << 10)
        assert_tree_equal(manager.restore(2), state)


@pytest.mark.parametrize("key", [None, b"k" * 32])
def test_a_damaged_shared_part_is_named_by_every_step_that_links_it(
    tmp_path: Path, key: bytes | None
) -> None:
    buffer = Buffer()
    with CheckpointManager(tmp_path, _options(retention=KeepAll(), signing_key=key)) as manager:
        saved = _save_some(manager, buffer, range(1, 4))
        shared = [
            path
            for path in _step_dir(tmp_path, 3).iterdir()
            if ".data." in path.name and path.stat().st_nlink == 3
        ]
        assert shared  # a part none of the saves changed: one file, three names
        victim = shared[-1]
        raw = bytearray(victim.read_bytes())
        raw[100] ^= 0x01
        victim.write_bytes(raw)  # in place: every name of the file sees it
        error = CheckpointSignatureError if key else CheckpointCorruptError
        for step in (1, 2, 3):
            named = str(_step_dir(tmp_path, step) / victim.name)
            for check in (manager.restore, manager.verify):
                with pytest.raises(error) as caught:
                    check(step)
                assert caught.value.path == named and caught.value.step == step
            if key is None:  # the other arrays are still read: each checked on its own
                selected = manager.restore(step, select=["cursor"])
                assert selected == {"cursor": saved[step]["cursor"]}


def test_signed_steps_share_parts_too(tmp_path: Path) -> None:
    buffer = Buffer()
    options = _options(retention=KeepAll(), signing_key=b"s" * 32)
    with CheckpointManager(tmp_path, options) as manager:
        saved = _save_some(manager, buffer, range(1, 3))
        own, shared = step_usage(_step_dir(tmp_path, 2))
        assert shared > own
        assert_tree_equal(manager.restore(2), saved[2])


def test_whole_and_parted_steps_live_side_by_side(tmp_path: Path) -> None:
    buffer = Buffer()
    with CheckpointManager(tmp_path, CheckpointManagerOptions(retention=KeepAll())) as manager:
        saved = _save_some(manager, buffer, range(1, 3))
    assert (_step_dir(tmp_path, 2) / "state.data").is_file()
    with CheckpointManager(tmp_path, _options(retention=KeepAll())) as manager:
        saved |= _save_some(manager, buffer, range(3, 5))
        assert not (_step_dir(tmp_path, 4) / "state.data").exists()
        assert step_usage(_step_dir(tmp_path, 4))[1] > 0
        for step, state in saved.items():
            assert_tree_equal(manager.restore(step), state)
    with CheckpointManager(tmp_path, CheckpointManagerOptions(retention=KeepAll())) as manager:
        saved |= _save_some(manager, buffer, range(5, 6))
        assert (_step_dir(tmp_path, 5) / "state.data").is_file()
        for step, state in saved.items():
            assert_tree_equal(manager.restore(step), state)
            manager.verify(step)


def test_a_replaced_step_leaves_the_steps_that_link_it_whole(tmp_path: Path) -> None:
    buffer = Buffer()
    with CheckpointManager(tmp_path, _options(retention=KeepAll())) as manager:
        saved = _save_some(manager, buffer, range(1, 3))
        manager.save(1, {"other": torch.ones(3)}, replace=True).result()
        assert_tree_equal(manager.restore(2), saved[2])
        manager.verify(2)


def test_mlflow_gets_each_part_once_and_fetch_rebuilds_a_step(
    mlflow_server: Any, tmp_path: Path
) -> None:
    sync = MlflowSyncOptions(
        tracking_uri=mlflow_server.uri, experiment_name="incremental", backoff_initial_s=0.05
    )
    buffer = Buffer()
    with CheckpointManager(tmp_path / "a", _options(retention=KeepAll(), mlflow=sync)) as manager:
        saved = _save_some(manager, buffer, range(1, 4))
        assert manager.wait_for_uploads(timeout=120)
        run_id = manager.mlflow_run_id()
        digests = {
            entry["xxh3_128"]
            for step in (1, 2, 3)
            for entry in manager.metadata(step)["files"].values()
            if "xxh3_128" in entry
        }
    remote = list(mlflow_server.artifacts.glob(f"*/{run_id}/artifacts/checkpoints/parts/*"))
    assert sorted(path.name for path in remote) == sorted(digests)
    assert not list(mlflow_server.artifacts.glob(f"*/{run_id}/artifacts/checkpoints/step_*/*.0*"))
    fetch = MlflowSyncOptions(tracking_uri=mlflow_server.uri, run_id=run_id)
    with CheckpointManager(tmp_path / "b", _options(mlflow=fetch)) as manager:
        assert manager.fetch(2) == 2
        assert_tree_equal(manager.restore(2), saved[2])
        manager.verify(2)
