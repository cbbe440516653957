"""Partial restore reads and verifies only the selected subtrees; array metadata reads no
array at all. (DCP loads only the keys of the state dict it is given; Orbax restores a
subtree with a partial restore target.)"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import assert_tree_equal

from alphatriangle.data import (
    ArrayMetadata,
    CheckpointCorruptError,
    CheckpointManager,
    CheckpointManagerOptions,
    PickledObject,
    WeightsOnlyError,
)


def _state() -> dict[str, Any]:
    generator = torch.Generator().manual_seed(0)
    model = OrderedDict(
        (f"layer{i}.weight", torch.randn(64, 64, generator=generator)) for i in range(3)
    )
    optimizer = {
        "state": {i: {"exp_avg": torch.randn(64, 64, generator=generator)} for i in range(3)},
        "param_groups": [{"lr": 0.1, "params": [0, 1, 2]}],
    }
    return {
        "model": model,
        "optimizer": optimizer,
        "buffer": [np.arange(10), np.ones(3)],
        "step": 5,
        "extra": {"tags": {"a", "b"}},
    }


def _saved(ckpt_dir: Path, **options: Any) -> dict[str, Any]:
    state = _state()
    with CheckpointManager(ckpt_dir, CheckpointManagerOptions(**options)) as manager:
        manager.save(1, state)
    return state


def test_selected_subtrees_come_back_alone(ckpt_dir: Path) -> None:
    state = _saved(ckpt_dir)
    with CheckpointManager(ckpt_dir, CheckpointManagerOptions(read_only=True)) as reader:
        assert_tree_equal(reader.restore(select=["model"]), {"model": state["model"]})
        nested = reader.restore(select=[("optimizer", "state", 1), ("buffer", 0), "step"])
        assert_tree_equal(
            nested,
            {
                "optimizer": {"state": {1: state["optimizer"]["state"][1]}},
                "buffer": {0: state["buffer"][0]},
                "step": 5,
            },
        )
        assert reader.restore(select=["extra"]) == {"extra": {"tags": {"a", "b"}}}
        with pytest.raises(KeyError, match="'optimizer', 'nope'"):
            reader.restore(select=[("optimizer", "nope")])
        with pytest.raises(WeightsOnlyError):
            reader.restore(select=["extra"], weights_only=True)
        assert reader.restore(select=["model"], weights_only=True)["model"].keys() == (
            state["model"].keys()
        )


def _flip_array_byte(ckpt_dir: Path, array: int) -> None:
    import json

    step_dir = ckpt_dir / "step_000000001"
    spec = json.loads((step_dir / "state.index.json").read_bytes())["arrays"][array]
    data = bytearray((step_dir / "state.data").read_bytes())
    data[spec["offset"] + 5] ^= 0xFF
    (step_dir / "state.data").write_bytes(bytes(data))


def test_only_the_selected_bytes_are_read_and_each_array_is_verified(ckpt_dir: Path) -> None:
    state = _saved(ckpt_dir)
    _flip_array_byte(ckpt_dir, 4)  # an optimizer moment: arrays 0-2 are the model
    with CheckpointManager(ckpt_dir, CheckpointManagerOptions(read_only=True)) as reader:
        assert_tree_equal(reader.restore(select=["model"]), {"model": state["model"]})
        with pytest.raises(CheckpointCorruptError, match="array 4"):
            reader.restore(select=["optimizer"])
        with pytest.raises(CheckpointCorruptError, match="checksum mismatch"):
            reader.restore()


def test_signed_steps_are_read_whole_even_for_a_selection(ckpt_dir: Path) -> None:
    key = b"sixteen-byte-key-and-more"
    state = _saved(ckpt_dir, signing_key=key)
    _flip_array_byte(ckpt_dir, 4)
    options = CheckpointManagerOptions(read_only=True, signing_key=key)
    with CheckpointManager(ckpt_dir, options) as reader, pytest.raises(CheckpointCorruptError):
        reader.restore(select=["model"])
    assert state["step"] == 5


def test_array_metadata_reads_no_array(ckpt_dir: Path) -> None:
    _saved(ckpt_dir)
    (ckpt_dir / "step_000000001" / "state.data").write_bytes(b"")  # not even looked at
    with CheckpointManager(ckpt_dir, CheckpointManagerOptions(read_only=True)) as reader:
        meta = reader.array_metadata()
    weight = meta["model"]["layer0.weight"]
    assert weight == ArrayMetadata("torch", "float32", (64, 64), 64 * 64 * 4, "cpu")
    assert meta["buffer"][0].framework == "numpy" and meta["buffer"][0].shape == (10,)
    assert meta["step"] == 5
    assert isinstance(meta["extra"]["tags"], PickledObject)
