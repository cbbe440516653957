"""Restoring a step strictly (``restore.py``, ``full_restore.py``, ``_verified_files.py``): a
crafted file never yields a hang, a read outside the step, code execution or an unclear
error. The field-by-field checks are in ``test_manifest.py``, ``test_index.py``,
``test_tree.py``."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import (
    assert_tree_equal,
    committed_step,
    forge_step,
    restore_error,
    set_field,
    state_for_step,
)

from alphatriangle.data import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointManager,
    CheckpointManagerOptions,
    KeepAll,
    WeightsOnlyError,
)
from alphatriangle.data.checkpoint import _hash_thread
from alphatriangle.data.checkpoint.layout import index_file, step_dir_name

READ = CheckpointManagerOptions(read_only=True)


@pytest.mark.timeout(20)
def test_a_fifo_in_place_of_a_file_does_not_hang(ckpt_dir: Path) -> None:
    step_dir = committed_step(ckpt_dir)
    (step_dir / "state.data").unlink()
    os.mkfifo(step_dir / "state.data")
    assert "not a regular file" in str(restore_error(ckpt_dir))


def test_a_directory_in_place_of_a_file_is_corruption(ckpt_dir: Path) -> None:
    step_dir = committed_step(ckpt_dir)
    (step_dir / "state.index.json").unlink()
    (step_dir / "state.index.json").mkdir()
    assert "not a regular file" in str(restore_error(ckpt_dir))


def test_a_symlinked_file_is_not_followed(ckpt_dir: Path, tmp_path: Path) -> None:
    step_dir = committed_step(ckpt_dir)
    outside = tmp_path / "outside.data"
    shutil.copy(step_dir / "state.data", outside)
    (step_dir / "state.data").unlink()
    (step_dir / "state.data").symlink_to(outside)
    assert "symbolic link" in str(restore_error(ckpt_dir))


def test_a_symlinked_step_directory_is_not_a_step(ckpt_dir: Path, tmp_path: Path) -> None:
    step_dir = committed_step(ckpt_dir)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(step_dir, elsewhere / "step_000000002")
    (ckpt_dir / "step_000000002").symlink_to(elsewhere / "step_000000002")
    with CheckpointManager(ckpt_dir, READ) as reader:
        assert reader.all_steps() == [1]
        with pytest.raises(CheckpointError, match="not found"):
            reader.restore(2)


def test_a_huge_sparse_data_file_is_refused_before_allocating(ckpt_dir: Path) -> None:
    step_dir = committed_step(ckpt_dir)
    size = 1 << 40
    with (step_dir / "state.data").open("r+b") as file:
        file.truncate(size)
    spec = {"framework": "numpy", "dtype": "|u1", "shape": [size], "offset": 0, "nbytes": size}
    forge_step(
        step_dir,
        index=set_field(["arrays"], [spec, {**spec, "shape": [0], "nbytes": 0}]),
        manifest=set_field(["files", "state.data", "size"], size),
    )
    reader = CheckpointManager(ckpt_dir, READ)
    with pytest.raises(CheckpointError, match="more than this machine's memory"):
        reader.restore(1)


class _Unpicklable:
    """Pickles fine; unpickling calls int("x")."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (int, ("x",))


def test_an_object_that_cannot_unpickle_is_named_and_skipped_by_fallback(ckpt_dir: Path) -> None:
    with CheckpointManager(ckpt_dir, CheckpointManagerOptions(retention=KeepAll())) as m:
        m.save(1, {"w": torch.ones(2), "ok": {1, 2}})
        m.save(2, {"w": torch.ones(2), "bad": _Unpicklable()})
    with CheckpointManager(ckpt_dir, READ) as reader:
        with pytest.raises(CheckpointCorruptError, match="cannot unpickle") as info:
            reader.restore(2)
        assert info.value.path == str(ckpt_dir / "step_000000002" / "state.objects.pkl")
        assert reader.restore(fallback=True)["ok"] == {1, 2}


class _Payload:
    """What an attacker would place in a checkpoint: unpickling it touches a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_weights_only_never_unpickles_and_names_the_objects(ckpt_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    committed_step(ckpt_dir, {"w": torch.ones(3), "config": {"hook": _Payload(marker)}})
    with CheckpointManager(ckpt_dir, READ) as reader:
        with pytest.raises(WeightsOnlyError) as info:
            reader.restore(weights_only=True)
        assert "state['config']['hook']" in str(info.value)
        reader.verify(1)  # inspecting never unpickles either
    assert not marker.exists()
    options = CheckpointManagerOptions(read_only=True, weights_only=True)
    with CheckpointManager(ckpt_dir, options) as reader:
        with pytest.raises(WeightsOnlyError):
            reader.restore()
        assert reader.restore(weights_only=False)["w"].sum() == 3  # an explicit opt-in
    assert marker.exists()  # which is exactly why weights_only exists


def test_a_refused_restore_leaves_no_hashing_thread_behind(ckpt_dir: Path) -> None:
    """The mapped pass starts before the index is read: a restore refused after it (an
    item with objects under ``weights_only``, a corrupt index) hands its thread back."""
    committed_step(ckpt_dir, {"w": torch.ones(3), "config": {"pairs": {1, 2}}}, step=1)
    committed_step(ckpt_dir, {"w": torch.ones(3)}, step=2)
    index = ckpt_dir / step_dir_name(2) / index_file("state")
    index.write_bytes(index.read_bytes().replace(b"[", b"{", 1))
    with CheckpointManager(ckpt_dir, READ) as reader:
        for _ in range(3 * _hash_thread._IDLE_WORKERS):
            with pytest.raises(WeightsOnlyError):
                reader.restore(1, weights_only=True)
            with pytest.raises(CheckpointCorruptError):
                reader.restore(2)
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:  # (a thread given back last may still be ending)
        hashing = [t for t in threading.enumerate() if t.name == "checksum"]
        if len(hashing) <= _hash_thread._IDLE_WORKERS:
            break
        time.sleep(0.01)
    assert len(hashing) <= _hash_thread._IDLE_WORKERS


def test_weights_only_restores_tensors_arrays_and_scalars(ckpt_dir: Path) -> None:
    state = state_for_step(3)
    committed_step(ckpt_dir, state, step=3)
    with CheckpointManager(ckpt_dir, CheckpointManagerOptions(weights_only=True)) as manager:
        assert_tree_equal(manager.restore(), state)


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_subclasses_come_back_as_themselves(ckpt_dir: Path) -> None:
    class Tagged(torch.Tensor):
        pass

    masked = np.ma.masked_array([1.0, 2.0, 3.0], mask=[False, True, False])
    matrix = np.matrix([[1, 2], [3, 4]])
    tagged = torch.arange(4.0).as_subclass(Tagged)
    state = {"masked": masked, "matrix": matrix, "tagged": tagged, "plain": np.arange(3)}
    committed_step(ckpt_dir, state)
    with CheckpointManager(ckpt_dir, READ) as reader:
        restored = reader.restore(weights_only=False)  # subclasses are no allowed globals
    assert type(restored["masked"]) is np.ma.MaskedArray
    assert restored["masked"].mask.tolist() == [False, True, False]
    assert type(restored["matrix"]) is np.matrix and restored["matrix"].tolist() == [[1, 2], [3, 4]]
    assert type(restored["tagged"]) is Tagged and torch.equal(restored["tagged"], tagged)
    assert type(restored["plain"]) is np.ndarray
