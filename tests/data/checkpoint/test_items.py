"""Several named items per step, each restored from the newest step that holds it, and kept
by retention while it is the newest holder (a buffer saved every 1,000 steps survives
KeepLatest of checkpoints saved every 100)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import assert_tree_equal, state_for_step

from alphatriangle.data import (
    CheckpointManager,
    CheckpointManagerOptions,
    CheckpointNotFoundError,
    KeepLatest,
)

OPTIONS = CheckpointManagerOptions(retention=KeepLatest(2))


def _save_run(directory: Path) -> None:
    with CheckpointManager(directory, OPTIONS) as manager:
        manager.save(10, items={"checkpoint": state_for_step(10), "buffer": {"b": torch.ones(5)}})
        for step in (20, 30, 40):
            manager.save(step, items={"checkpoint": state_for_step(step)})
        manager.wait_until_finished()
        assert manager.all_steps() == [10, 30, 40]  # 10 is the newest step holding "buffer"


def test_items_are_restored_from_the_newest_step_holding_them(ckpt_dir: Path) -> None:
    _save_run(ckpt_dir)
    with CheckpointManager(ckpt_dir, OPTIONS) as manager:
        assert_tree_equal(manager.restore(item="checkpoint"), state_for_step(40))
        assert torch.equal(manager.restore(item="buffer")["b"], torch.ones(5))
        assert_tree_equal(manager.restore(10, item="checkpoint"), state_for_step(10))
        with pytest.raises(CheckpointNotFoundError, match="holds no item 'buffer'"):
            manager.restore(40, item="buffer")
        with pytest.raises(CheckpointNotFoundError, match="holding 'state'"):
            manager.restore()
        assert manager.restore(item="buffer", fallback=True)["b"].sum() == 5
        # A reopened directory prunes the same way: the buffer's step stays.
        manager.save(50, items={"checkpoint": state_for_step(50)})
        manager.wait_until_finished()
        assert manager.all_steps() == [10, 40, 50]
        manager.save(60, items={"checkpoint": state_for_step(60), "buffer": {"b": torch.zeros(5)}})
        manager.wait_until_finished()
        assert manager.all_steps() == [50, 60]


def test_item_arguments_are_checked(ckpt_dir: Path) -> None:
    with CheckpointManager(ckpt_dir) as manager:
        with pytest.raises(ValueError, match="not both"):
            manager.save(1, {"a": 1}, items={"x": {}})
        with pytest.raises(ValueError, match="item names"):
            manager.save(1, items={"../x": {}})
        with pytest.raises(ValueError, match="at least one"):
            manager.save(1, items={})
        assert manager.all_steps() == []
