"""Zero-copy restore: copy-on-write views of the mapped data file, verified in one pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from alphatriangle.data import (
    CheckpointCorruptError,
    CheckpointManager,
    CheckpointManagerOptions,
    KeepAll,
    KeepLatest,
)
from alphatriangle.data.checkpoint.mapping import plan_chunks


def _state() -> dict[str, object]:
    generator = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(256, 256, generator=generator),
        "b": torch.arange(10, dtype=torch.int64),
        "a": np.linspace(0, 1, 1000, dtype=np.float32),
    }


def _mapped_files() -> str:
    return Path("/proc/self/maps").read_text()


def test_writes_to_a_restored_state_never_reach_the_checkpoint(ckpt_dir: Path) -> None:
    state = _state()
    with CheckpointManager(ckpt_dir) as manager:
        manager.save(0, state)
        manager.wait_until_finished()
        restored = manager.restore(0)
        assert str(ckpt_dir / "step_000000000" / "state.data") in _mapped_files()
        restored["w"].mul_(0.0)  # in place, on the mapped pages
        restored["a"][:] = 7.0
        restored["b"] += 1
        manager.verify(0)  # every checksum still holds
        again = manager.restore(0)
    assert torch.equal(again["w"], state["w"]) and torch.equal(again["b"], state["b"])
    assert np.array_equal(again["a"], state["a"])
    assert restored["w"].abs().sum() == 0 and (restored["a"] == 7.0).all()


def test_a_restored_state_outlives_the_deletion_of_its_step(ckpt_dir: Path) -> None:
    state = _state()
    options = CheckpointManagerOptions(retention=KeepLatest(1))
    with CheckpointManager(ckpt_dir, options) as manager:
        manager.save(0, state)
        manager.wait_until_finished()
        restored = manager.restore(0)
        for step in (1, 2):
            manager.save(step, {"w": torch.zeros(3)})
        manager.wait_until_finished()
        assert manager.all_steps() == [2]
        assert not (ckpt_dir / "step_000000000").exists()
    # The mapping keeps the deleted file's pages: the state is whole, and writable.
    assert torch.equal(restored["w"], state["w"]) and np.array_equal(restored["a"], state["a"])
    restored["w"].add_(1.0)
    assert torch.equal(restored["w"], state["w"] + 1.0)  # type: ignore[operator]
    assert "(deleted)" in _mapped_files()
    del restored
    import gc

    gc.collect()
    assert "step_000000000/state.data (deleted)" not in _mapped_files()  # space returned


def test_copy_mode_reads_into_fresh_memory(ckpt_dir: Path) -> None:
    state = _state()
    options = CheckpointManagerOptions(restore_mode="copy", retention=KeepAll())
    with CheckpointManager(ckpt_dir, options) as manager:
        manager.save(0, state)
        manager.wait_until_finished()
        restored = manager.restore(0)
        assert str(ckpt_dir / "step_000000000" / "state.data") not in _mapped_files()
    assert torch.equal(restored["w"], state["w"])


@pytest.mark.parametrize("mode", ["mmap", "copy"])
def test_both_modes_refuse_a_flipped_byte_and_a_truncation(ckpt_dir: Path, mode: str) -> None:
    options = CheckpointManagerOptions(restore_mode=mode, retention=KeepAll())  # type: ignore[arg-type]
    with CheckpointManager(ckpt_dir, options) as manager:
        manager.save(0, _state())
        manager.save(1, _state())
        manager.wait_until_finished()
        flipped = ckpt_dir / "step_000000000" / "state.data"
        raw = bytearray(flipped.read_bytes())
        raw[-5] ^= 0x01
        flipped.write_bytes(bytes(raw))
        with pytest.raises(CheckpointCorruptError, match="checksum mismatch") as info:
            manager.restore(0)
        assert str(flipped) in str(info.value)
        truncated = ckpt_dir / "step_000000001" / "state.data"
        truncated.write_bytes(truncated.read_bytes()[:-64])
        with pytest.raises(CheckpointCorruptError, match="size") as info:
            manager.restore(1)
        assert str(truncated) in str(info.value)


@given(
    sizes=st.lists(st.integers(min_value=0, max_value=300), min_size=0, max_size=20),
    gaps=st.lists(st.integers(min_value=0, max_value=64), min_size=20, max_size=20),
    chunk=st.integers(min_value=1, max_value=256),
)
def test_chunk_plan_covers_every_byte_once(sizes: list[int], gaps: list[int], chunk: int) -> None:
    regions, offset = [], 0
    for size, gap in zip(sizes, gaps, strict=False):
        offset += gap
        regions.append((offset, size))
        offset += size
    shuffled = list(reversed(regions))  # the plan orders by offset itself
    chunks = plan_chunks(shuffled, chunk)
    covered: dict[int, set[int]] = {i: set() for i in range(len(shuffled))}
    for pieces in chunks:
        assert sum(p.nbytes for p in pieces) <= chunk
        position = 0
        for piece in pieces:
            assert piece.chunk_offset == position and piece.nbytes > 0
            position += piece.nbytes
            start, _ = shuffled[piece.region]
            assert piece.source == start + piece.destination
            span = set(range(piece.destination, piece.destination + piece.nbytes))
            assert not covered[piece.region] & span
            covered[piece.region] |= span
    for index, (_, size) in enumerate(shuffled):
        assert covered[index] == set(range(size))
