"""The sweep at open: what each kind of leftover becomes."""

from __future__ import annotations

from pathlib import Path

import torch

from alphatriangle.data import CheckpointManager, CheckpointManagerOptions, KeepAll
from alphatriangle.data.checkpoint.layout import step_dir_name, temporary_dir_name, trash_dir_name


def _committed(directory: Path, *steps: int) -> None:
    with CheckpointManager(directory, CheckpointManagerOptions(retention=KeepAll())) as manager:
        for step in steps:
            manager.save(step, {"step": step, "w": torch.full((4,), float(step))})


def test_sweep_removes_temporary_and_trash_and_puts_back_an_orphaned_old_copy(
    ckpt_dir: Path,
) -> None:
    _committed(ckpt_dir, 1, 2, 3)
    # A crash mid-save: a half-written temporary directory.
    half = ckpt_dir / temporary_dir_name(4)
    half.mkdir()
    (half / "state.data").write_bytes(b"partial")
    # A crash mid-delete: step 1 already renamed out of the namespace.
    (ckpt_dir / step_dir_name(1)).rename(ckpt_dir / trash_dir_name(1))
    # A crash mid-replace, after the old copy of step 2 moved aside, before the new landed.
    (ckpt_dir / step_dir_name(2)).rename(ckpt_dir / trash_dir_name(2, replaced=True))
    # A crash mid-replace, after the new copy of step 3 landed, before the old was removed.
    old_three = ckpt_dir / trash_dir_name(3, replaced=True)
    old_three.mkdir()
    (old_three / "stale").write_text("old copy")

    with CheckpointManager(ckpt_dir) as manager:
        assert manager.all_steps() == [2, 3]
        assert manager.restore(2)["step"] == 2
        assert manager.restore(3)["step"] == 3
    assert sorted(p.name for p in ckpt_dir.iterdir() if p.is_dir()) == [
        step_dir_name(2),
        step_dir_name(3),
    ]


def test_replacing_a_step_leaves_only_the_new_copy(ckpt_dir: Path) -> None:
    _committed(ckpt_dir, 5)
    with CheckpointManager(ckpt_dir) as manager:
        manager.save(5, {"step": 50}, replace=True)
        manager.wait_until_finished()
        assert manager.restore(5) == {"step": 50}
    assert sorted(p.name for p in ckpt_dir.iterdir() if p.is_dir()) == [step_dir_name(5)]
