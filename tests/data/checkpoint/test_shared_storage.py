"""Tensors that share storage (tied weights, views of a flat buffer) are written once and
come back sharing it, as torch.save and DCP restore them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import assert_tree_equal, forge_step

from alphatriangle.data import (
    CheckpointCorruptError,
    CheckpointManager,
    CheckpointManagerOptions,
    KeepAll,
)

ALL = CheckpointManagerOptions(retention=KeepAll())


def _restore(ckpt_dir: Path, state: Any, step: int = 0) -> Any:
    with CheckpointManager(ckpt_dir, ALL) as manager:
        manager.save(step, state)
        manager.wait_until_finished()
        return manager.restore(step)


def _data_size(ckpt_dir: Path, step: int = 0) -> int:
    return (ckpt_dir / f"step_{step:09d}" / "state.data").stat().st_size


def test_tied_weights_come_back_tied(ckpt_dir: Path) -> None:
    # torch.save keeps storage sharing (test_serialization's shared-storage tests); so do we.
    encoder, decoder = torch.nn.Embedding(100, 16), torch.nn.Linear(16, 100, bias=False)
    decoder.weight = encoder.weight  # tied
    state = {"encoder": encoder.state_dict(), "decoder": decoder.state_dict()}
    restored = _restore(ckpt_dir, state)
    assert_tree_equal(restored, state)
    assert restored["encoder"]["weight"].data_ptr() == restored["decoder"]["weight"].data_ptr()
    assert _data_size(ckpt_dir) == 100 * 16 * 4  # written once


def test_views_of_a_flat_buffer_are_written_once_and_share_it(ckpt_dir: Path) -> None:
    flat = torch.randn(10_000)
    params = {
        "a": flat[:1000].view(10, 100),
        "b": flat[1000:4000],
        "c": flat[4000:].view(60, 100).t(),
    }
    restored = _restore(ckpt_dir, {"params": params, "flat": flat})
    assert_tree_equal(restored["params"], params)
    assert torch.equal(restored["flat"], flat)
    assert len({t.untyped_storage().data_ptr() for t in restored["params"].values()}) == 1
    restored["flat"][0] = 123.0  # one storage, as saved: a write shows through every view
    assert restored["params"]["a"][0, 0] == 123.0
    assert _data_size(ckpt_dir) <= 10_000 * 4 + 64


def test_sparse_views_of_a_large_storage_are_copied_alone(ckpt_dir: Path) -> None:
    big = torch.randn(1 << 20)
    state = {"head": big[:10], "tail": big[-10:]}
    restored = _restore(ckpt_dir, state)
    assert_tree_equal(restored, state)
    assert _data_size(ckpt_dir) < 1024  # not the 4 MB storage


def test_snapshot_and_changed_sharing_between_saves(ckpt_dir: Path) -> None:
    flat = torch.zeros(1000)
    shared = {"x": flat[:500], "y": flat[500:]}
    separate = {"x": torch.ones(500), "y": torch.full((500,), 2.0)}
    with CheckpointManager(ckpt_dir, ALL) as manager:
        manager.save(0, shared)
        flat.add_(7.0)  # after save returned: not captured
        manager.save(1, shared)  # same placement, reused
        manager.save(2, separate)  # same shapes, no sharing any more
        manager.save(3, shared)  # sharing again
        manager.wait_until_finished()
        assert torch.all(manager.restore(0)["x"] == 0.0)
        assert torch.all(manager.restore(1)["y"] == 7.0)
        assert_tree_equal(manager.restore(2), separate)
        assert_tree_equal(manager.restore(3), shared)


def test_partial_restore_of_a_view_reads_its_storage(ckpt_dir: Path) -> None:
    flat = torch.arange(100.0)
    state = {"model": {"w": flat[:50], "b": flat[50:]}, "other": torch.ones(3)}
    with CheckpointManager(ckpt_dir, ALL) as manager:
        manager.save(0, state)
        manager.wait_until_finished()
        picked = manager.restore(select=[("model", "b")])
        meta = manager.array_metadata(0)
    assert torch.equal(picked["model"]["b"], flat[50:])
    assert meta["model"]["w"].nbytes == 200


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"view_of": 0}, "not of a storage"),
        ({"storage_offset": 10_000}, "past the end of its storage"),
        ({"stride": [1, 1]}, "does not fit shape"),
    ],
)
def test_a_view_entry_is_checked_against_its_storage(
    ckpt_dir: Path, edit: dict[str, Any], message: str
) -> None:
    flat = torch.arange(100.0)
    _restore(ckpt_dir, {"w": flat[:50], "b": flat[50:]})
    step_dir = ckpt_dir / "step_000000000"
    index = json.loads((step_dir / "state.index.json").read_bytes())
    assert "view_of" in index["arrays"][0]
    forge_step(step_dir, index=lambda data: data["arrays"][0].update(edit))
    reader = CheckpointManager(ckpt_dir, CheckpointManagerOptions(read_only=True))
    with pytest.raises(CheckpointCorruptError, match=message):
        reader.restore()
