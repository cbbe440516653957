"""Strict reading: a step that passes its checksums is still checked field by field, and a
crafted one never yields wrong data, a hang, code execution or an unclear error."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import assert_tree_equal, forge_step, state_for_step

from alphatriangle.data import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointManager,
    CheckpointManagerOptions,
    KeepAll,
    WeightsOnlyError,
)

READ = CheckpointManagerOptions(read_only=True)


def _committed(ckpt_dir: Path, state: Any = None, step: int = 1) -> Path:
    with CheckpointManager(ckpt_dir, CheckpointManagerOptions(retention=KeepAll())) as m:
        m.save(step, state if state is not None else {"w": torch.arange(6.0), "n": 3})
    return ckpt_dir / f"step_{step:09d}"


def _restore_error(ckpt_dir: Path, step: int = 1) -> CheckpointCorruptError:
    with CheckpointManager(ckpt_dir, READ) as reader:
        with pytest.raises(CheckpointCorruptError) as info:
            reader.restore(step)
        with pytest.raises(CheckpointCorruptError):
            reader.verify(step)  # the inspecting path finds it too, without unpickling
    return info.value


def _set(path: list[Any], value: Any) -> Any:
    def edit(data: dict[str, Any]) -> None:
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return edit


MANIFEST_EDITS = {
    "format_version as a string": (["format_version"], "1", "format_version"),
    "format_version as a bool": (["format_version"], True, "format_version"),
    "step as a string": (["step"], "1", "step"),
    "items not a list": (["items"], "state", "items"),
    "item with a separator": (["items"], ["../state"], "items"),
    "files not an object": (["files"], [], "files"),
    "size as a string": (["files", "state.data", "size"], "48", "size"),
    "negative size": (["files", "state.data", "size"], -1, "size"),
    "checksum not hex": (["files", "state.data", "xxh3_64"], "zz", "xxh3_64"),
    "metric as a list": (["metrics"], {"loss": [1]}, "metric"),
    "wall_time as null": (["wall_time"], None, "wall_time"),
}


@pytest.mark.parametrize("edit", list(MANIFEST_EDITS), ids=list(MANIFEST_EDITS))
def test_malformed_manifest_fields_are_corruption(ckpt_dir: Path, edit: str) -> None:
    path, value, expected = MANIFEST_EDITS[edit]
    step_dir = _committed(ckpt_dir)
    forge_step(step_dir, manifest=_set(path, value))
    error = _restore_error(ckpt_dir)
    assert error.path == str(step_dir / "manifest.json")
    assert expected in str(error)


def test_a_step_copied_under_another_number_is_refused(ckpt_dir: Path) -> None:
    step_dir = _committed(ckpt_dir)
    shutil.copytree(step_dir, ckpt_dir / "step_000000007")
    error = _restore_error(ckpt_dir, 7)
    assert "says step 1" in str(error) and error.step == 7


INDEX_EDITS = {
    "unknown framework": (["arrays", 0, "framework"], "jax", "framework"),
    "dtype resolved by name": (["arrays", 0, "dtype"], "_dynamo", "dtype"),
    "numpy object dtype": (["arrays", 0], None, "dtype"),  # filled in below
    "device with junk": (["arrays", 0, "device"], "cuda:0; rm -rf", "device"),
    "nbytes not the shape's": (["arrays", 0, "nbytes"], 20, "nbytes"),
    "shape as a bool": (["arrays", 0, "shape"], [True], "shape"),
    "array past the data": (["arrays", 0, "offset"], 64, "end at byte"),
    "array reference true": (["tree", "d", 0, 1], {"a": True}, "array reference"),
    "array reference -1": (["tree", "d", 0, 1], {"a": -1}, "array reference"),
    "object reference without objects": (["tree", "d", 0, 1], {"o": 0}, "pickled object"),
    "unknown tag": (["tree", "d", 0, 1], {"x": 0}, "tag"),
    "bare list node": (["tree", "d", 0, 1], [1, 2], "one-key object"),
    "non-finite tag with junk": (["tree", "d", 0, 1], {"f": "1e999"}, "'f' node"),
    "unhashable key": (["tree", "d", 0, 0], {"l": []}, "bad dict key"),
}


@pytest.mark.parametrize("edit", list(INDEX_EDITS), ids=list(INDEX_EDITS))
def test_malformed_index_is_corruption(ckpt_dir: Path, edit: str) -> None:
    path, value, expected = INDEX_EDITS[edit]
    step_dir = _committed(ckpt_dir)
    if edit == "numpy object dtype":
        value = {"framework": "numpy", "dtype": "|O", "shape": [6], "offset": 0, "nbytes": 48}
    forge_step(step_dir, index=_set(path, value))
    error = _restore_error(ckpt_dir)
    assert error.path == str(step_dir / "state.index.json")
    assert expected in str(error), str(error)


@pytest.mark.parametrize("shared", [False, True], ids=["array", "view"])
def test_requires_grad_on_an_integer_tensor_is_corruption(ckpt_dir: Path, shared: bool) -> None:
    ints = torch.arange(6)
    state = {"w": ints, "v": ints[2:]} if shared else {"w": ints}
    step_dir = _committed(ckpt_dir, state)

    def set_grad(index: dict[str, Any]) -> None:
        index["arrays"][0]["requires_grad"] = True

    forge_step(step_dir, index=set_grad)
    error = _restore_error(ckpt_dir)
    assert error.path == str(step_dir / "state.index.json")
    assert "requires_grad" in str(error) and "int64" in str(error)


def test_deeply_nested_index_is_corruption_not_recursion(ckpt_dir: Path) -> None:
    step_dir = _committed(ckpt_dir)
    deep = b'{"l":[' * 50_000 + b"1" + b"]}" * 50_000
    forge_step(step_dir, files={"state.index.json": b'{"arrays":[],"tree":' + deep + b"}"})
    assert "JSON" in str(_restore_error(ckpt_dir)) or "nested" in str(_restore_error(ckpt_dir))


def test_trees_deeper_than_the_limit_are_refused_at_save(ckpt_dir: Path) -> None:
    from alphatriangle.data.checkpoint.tree import MAX_TREE_DEPTH

    deep: Any = 1
    for _ in range(MAX_TREE_DEPTH):
        deep = [deep]
    with CheckpointManager(ckpt_dir) as manager:
        manager.save(0, deep)
        manager.wait_until_finished()
        assert_tree_equal(manager.restore(0), deep)
        with pytest.raises(ValueError, match="nested deeper"):
            manager.save(1, [deep])


@pytest.mark.timeout(20)
def test_a_fifo_in_place_of_a_file_does_not_hang(ckpt_dir: Path) -> None:
    step_dir = _committed(ckpt_dir)
    (step_dir / "state.data").unlink()
    os.mkfifo(step_dir / "state.data")
    assert "not a regular file" in str(_restore_error(ckpt_dir))


def test_a_directory_in_place_of_a_file_is_corruption(ckpt_dir: Path) -> None:
    step_dir = _committed(ckpt_dir)
    (step_dir / "state.index.json").unlink()
    (step_dir / "state.index.json").mkdir()
    assert "not a regular file" in str(_restore_error(ckpt_dir))


def test_a_symlinked_file_is_not_followed(ckpt_dir: Path, tmp_path: Path) -> None:
    step_dir = _committed(ckpt_dir)
    outside = tmp_path / "outside.data"
    shutil.copy(step_dir / "state.data", outside)
    (step_dir / "state.data").unlink()
    (step_dir / "state.data").symlink_to(outside)
    assert "symbolic link" in str(_restore_error(ckpt_dir))


def test_a_symlinked_step_directory_is_not_a_step(ckpt_dir: Path, tmp_path: Path) -> None:
    step_dir = _committed(ckpt_dir)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(step_dir, elsewhere / "step_000000002")
    (ckpt_dir / "step_000000002").symlink_to(elsewhere / "step_000000002")
    with CheckpointManager(ckpt_dir, READ) as reader:
        assert reader.all_steps() == [1]
        with pytest.raises(CheckpointError, match="not found"):
            reader.restore(2)


def test_a_huge_sparse_data_file_is_refused_before_allocating(ckpt_dir: Path) -> None:
    step_dir = _committed(ckpt_dir)
    size = 1 << 40
    with (step_dir / "state.data").open("r+b") as file:
        file.truncate(size)
    spec = {"framework": "numpy", "dtype": "|u1", "shape": [size], "offset": 0, "nbytes": size}
    forge_step(
        step_dir,
        index=_set(["arrays"], [spec, {**spec, "shape": [0], "nbytes": 0}]),
        manifest=_set(["files", "state.data", "size"], size),
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
    _committed(ckpt_dir, {"w": torch.ones(3), "config": {"hook": _Payload(marker)}})
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


def test_weights_only_restores_tensors_arrays_and_scalars(ckpt_dir: Path) -> None:
    state = state_for_step(3)
    _committed(ckpt_dir, state, step=3)
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
    _committed(ckpt_dir, state)
    with CheckpointManager(ckpt_dir, READ) as reader:
        restored = reader.restore(weights_only=False)  # subclasses are no allowed globals
    assert type(restored["masked"]) is np.ma.MaskedArray
    assert restored["masked"].mask.tolist() == [False, True, False]
    assert type(restored["matrix"]) is np.matrix and restored["matrix"].tolist() == [[1, 2], [3, 4]]
    assert type(restored["tagged"]) is Tagged and torch.equal(restored["tagged"], tagged)
    assert type(restored["plain"]) is np.ndarray


@pytest.mark.parametrize(
    ("value", "error"),
    [("1.5", TypeError), (True, TypeError), (1j, TypeError), (10**400, ValueError)],
    ids=["string", "bool", "complex", "huge int"],
)
def test_metrics_accept_real_numbers_only(ckpt_dir: Path, value: object, error: type) -> None:
    with CheckpointManager(ckpt_dir) as manager:
        with pytest.raises(error, match="'loss'"):
            manager.save(0, {"w": torch.ones(1)}, metrics={"loss": value})  # type: ignore[dict-item]
        assert manager.all_steps() == []


def test_metrics_take_numpy_scalars_and_one_element_tensors(ckpt_dir: Path) -> None:
    with CheckpointManager(ckpt_dir) as manager:
        metrics = {"a": np.float32(0.5), "b": torch.tensor(2.0), "c": 3}
        manager.save(0, {"w": torch.ones(1)}, metrics=metrics)  # type: ignore[arg-type]
        manager.wait_until_finished()
        assert manager.metadata(0)["metrics"] == {"a": 0.5, "b": 2.0, "c": 3.0}


def test_non_finite_metrics_read_back_as_floats(ckpt_dir: Path) -> None:
    with CheckpointManager(ckpt_dir) as manager:
        metrics = {"nan": math.nan, "inf": math.inf, "ninf": -math.inf, "x": 1.5}
        manager.save(0, {"w": torch.ones(1)}, metrics=metrics)
        manager.wait_until_finished()
        read = manager.metadata(0)["metrics"]
    assert all(type(v) is float for v in read.values()), read
    assert math.isnan(read["nan"]) and read["inf"] == math.inf and read["ninf"] == -math.inf
    assert min(read.values()) == -math.inf


def test_index_on_disk_is_canonical_json(ckpt_dir: Path) -> None:
    step_dir = _committed(ckpt_dir)
    index = json.loads((step_dir / "state.index.json").read_bytes())
    assert index["arrays"][0]["dtype"] == "float32"
