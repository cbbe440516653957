"""The index (``index.py``): each item's tree and array table, encoded on save and parsed
strictly on restore; the same module both ways."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import committed_step, forge_step, restore_error, set_field

from alphatriangle.data import CheckpointCorruptError
from alphatriangle.data.checkpoint.arrays import ArraySpec
from alphatriangle.data.checkpoint.index import encode_index, parse_index

PATH = Path("state.index.json")


def _specs() -> list[ArraySpec]:
    return [
        ArraySpec("torch", "float32", (2, 3), 0, 24, requires_grad=True, parameter=True),
        ArraySpec("numpy", "<i8", (4,), 64, 32),
        ArraySpec("torch", "uint8", (32,), 128, 32, storage=True),
        ArraySpec("torch", "int32", (2, 2), 0, 0, view_of=2, stride=(2, 1), storage_offset=1),
    ]


def _parse(data: bytes, size: int = 160) -> Any:
    return parse_index(data, PATH, 3, data_name="state.data", data_size=size)


def test_an_encoded_index_parses_back_to_the_same_specs() -> None:
    specs = _specs()
    digests = ["0123456789abcdef", "fedcba9876543210", "00000000000000ff", "unused"]
    tree = {"d": [["w", {"a": 0}], ["n", 3]]}
    index = _parse(encode_index(tree, specs, digests))
    assert index.tree == tree
    assert index.specs == specs
    assert index.checksums == [*digests[:3], None]  # a view has no bytes of its own


def test_the_data_file_must_end_where_the_last_array_ends() -> None:
    data = encode_index(None, _specs(), ["0" * 16] * 4)
    with pytest.raises(CheckpointCorruptError, match=r"end at byte 160, but state\.data"):
        _parse(data, size=200)


def test_a_view_past_its_storage_is_corruption() -> None:
    specs = _specs()
    specs[3] = ArraySpec("torch", "int32", (4, 4), 0, 0, view_of=2, stride=(4, 1))
    with pytest.raises(CheckpointCorruptError, match="past the end of its storage") as info:
        _parse(encode_index(None, specs, ["0" * 16] * 4))
    assert info.value.path == str(PATH) and info.value.step == 3


def test_an_index_without_its_table_is_corruption() -> None:
    with pytest.raises(CheckpointCorruptError, match="no array table"):
        _parse(b'{"tree": 1}', size=0)
    with pytest.raises(CheckpointCorruptError, match="not valid JSON"):
        _parse(b'{"tree": NaN, "arrays": []}', size=0)


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
    step_dir = committed_step(ckpt_dir)
    if edit == "numpy object dtype":
        value = {"framework": "numpy", "dtype": "|O", "shape": [6], "offset": 0, "nbytes": 48}
    forge_step(step_dir, index=set_field(path, value))
    error = restore_error(ckpt_dir)
    assert error.path == str(step_dir / "state.index.json")
    assert expected in str(error), str(error)


@pytest.mark.parametrize("shared", [False, True], ids=["array", "view"])
def test_requires_grad_on_an_integer_tensor_is_corruption(ckpt_dir: Path, shared: bool) -> None:
    ints = torch.arange(6)
    state = {"w": ints, "v": ints[2:]} if shared else {"w": ints}
    step_dir = committed_step(ckpt_dir, state)

    def set_grad(index: dict[str, Any]) -> None:
        index["arrays"][0]["requires_grad"] = True

    forge_step(step_dir, index=set_grad)
    error = restore_error(ckpt_dir)
    assert error.path == str(step_dir / "state.index.json")
    assert "requires_grad" in str(error) and "int64" in str(error)


def test_index_on_disk_is_canonical_json(ckpt_dir: Path) -> None:
    step_dir = committed_step(ckpt_dir)
    index = json.loads((step_dir / "state.index.json").read_bytes())
    assert index["arrays"][0]["dtype"] == "float32"


def test_the_same_bytes_are_parsed_once_and_other_bytes_anew() -> None:
    tree = {"d": [["once", {"a": 0}]]}  # bytes no other test parses
    data = encode_index(tree, _specs(), ["0" * 16] * 4)
    first = _parse(data)
    assert _parse(bytes(bytearray(data))) is first  # equal bytes: the parse they had
    with pytest.raises(CheckpointCorruptError, match="end at byte 160"):
        _parse(data, size=161)  # the same bytes against another data file: checked again
    wrong = data.replace(b'"nbytes":32', b'"nbytes":31', 1)
    assert wrong != data
    with pytest.raises(CheckpointCorruptError, match="nbytes 31"):
        _parse(wrong)


def test_an_index_changed_after_a_restore_is_read_and_checked_again(ckpt_dir: Path) -> None:
    from alphatriangle.data import CheckpointManager, CheckpointManagerOptions

    step_dir = committed_step(ckpt_dir)
    with CheckpointManager(ckpt_dir, CheckpointManagerOptions(read_only=True)) as reader:
        assert reader.restore(1)["n"] == 3  # its index now parsed once
    index_path = step_dir / "state.index.json"
    data = index_path.read_bytes()
    index_path.write_bytes(data.replace(b'"float32"', b'"float64"', 1))  # not re-listed
    assert "checksum mismatch" in str(restore_error(ckpt_dir))
    index_path.write_bytes(data)
    forge_step(step_dir, index=set_field(["arrays", 0, "dtype"], "float64"))  # re-listed
    assert "nbytes" in str(restore_error(ckpt_dir))
