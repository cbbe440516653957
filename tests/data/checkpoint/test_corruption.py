"""Every kind of damage to a committed step is detected and named; nothing else is lost."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import assert_tree_equal, state_for_step

from alphatriangle.data import (
    CheckpointCorruptError,
    CheckpointManager,
    CheckpointManagerOptions,
    KeepAll,
)


def _flip_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


def _truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 7])


def _delete(path: Path) -> None:
    path.unlink()


def _append(path: Path) -> None:
    with path.open("ab") as f:
        f.write(b"\0")


def _edit_manifest_metric(path: Path) -> None:
    manifest = json.loads(path.read_text())
    manifest["metrics"]["loss"] = 0.0001
    path.write_text(json.dumps(manifest))


def _garble(path: Path) -> None:
    path.write_bytes(b"{not json")


DAMAGE: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "flipped data byte": ("state.data", _flip_byte, "checksum mismatch"),
    "truncated data": ("state.data", _truncate, "size"),
    "extended data": ("state.data", _append, "size"),
    "deleted data": ("state.data", _delete, "missing"),
    "flipped index byte": ("state.index.json", _flip_byte, "checksum mismatch"),
    "deleted index": ("state.index.json", _delete, "missing"),
    "flipped pickle byte": ("state.objects.pkl", _flip_byte, "checksum mismatch"),
    "edited manifest": ("manifest.json", _edit_manifest_metric, "manifest checksum mismatch"),
    "garbled manifest": ("manifest.json", _garble, "not valid JSON"),
    "deleted manifest": ("manifest.json", _delete, "missing"),
}


def _state(step: int) -> dict[str, object]:
    state = state_for_step(step, 0.5)
    state["extra"] = {1, 2, 3}  # a set is pickled: the step has an objects file too
    return state


@pytest.mark.parametrize("damage", list(DAMAGE), ids=list(DAMAGE))
def test_damage_is_detected_and_named(ckpt_dir: Path, damage: str) -> None:
    name, damage_file, expected = DAMAGE[damage]
    with CheckpointManager(ckpt_dir, CheckpointManagerOptions(retention=KeepAll())) as manager:
        for step in (1, 2):
            manager.save(step, _state(step), metrics={"loss": 1.0})
    target = ckpt_dir / "step_000000002" / name
    damage_file(target)
    with CheckpointManager(ckpt_dir) as manager:
        with pytest.raises(CheckpointCorruptError) as info:
            manager.restore(2)
        assert info.value.path == str(target)
        assert info.value.step == 2
        assert expected in str(info.value)
        assert str(target) in str(info.value)
        # The other step is untouched and still restores exactly.
        assert_tree_equal(manager.restore(1), _state(1))


def test_verification_can_be_turned_off_but_sizes_are_still_checked(ckpt_dir: Path) -> None:
    with CheckpointManager(ckpt_dir) as manager:
        manager.save(0, state_for_step(0, 0.5))
    data = ckpt_dir / "step_000000000" / "state.data"
    _flip_byte(data)
    options = CheckpointManagerOptions(verify_on_restore=False, read_only=True)
    with CheckpointManager(ckpt_dir, options) as manager:
        manager.restore(0)  # damage goes unnoticed: that is what turning verification off means
        _truncate(data)
        with pytest.raises(CheckpointCorruptError, match="size"):
            manager.restore(0)


def test_retention_never_deletes_a_step_it_cannot_read(ckpt_dir: Path) -> None:
    from alphatriangle.data import KeepBest

    options = CheckpointManagerOptions(retention=KeepBest(1, metric="loss"))
    with CheckpointManager(ckpt_dir, options) as manager:
        manager.save(0, {"v": 0}, metrics={"loss": 1.0})
    _garble(ckpt_dir / "step_000000000" / "manifest.json")
    with CheckpointManager(ckpt_dir, options) as manager:
        for step in (1, 2, 3):
            manager.save(step, {"v": step}, metrics={"loss": 0.5})
        manager.wait_until_finished()
        assert 0 in manager.all_steps()


def test_fallback_restores_the_newest_intact_step_and_says_so(
    ckpt_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with CheckpointManager(ckpt_dir, CheckpointManagerOptions(retention=KeepAll())) as manager:
        for step in (1, 2, 3):
            manager.save(step, _state(step))
    _flip_byte(ckpt_dir / "step_000000003" / "state.data")
    _delete(ckpt_dir / "step_000000002" / "state.index.json")
    with CheckpointManager(ckpt_dir) as manager:
        with pytest.raises(CheckpointCorruptError):
            manager.restore()  # strict by default: never a silent substitute
        assert_tree_equal(manager.restore(fallback=True), _state(1))
        with pytest.raises(ValueError, match="step=None"):
            manager.restore(2, fallback=True)
    assert "skipping corrupt step 3" in caplog.text
    assert "skipping corrupt step 2" in caplog.text
    assert "restored step 1, the newest intact one" in caplog.text
    _flip_byte(ckpt_dir / "step_000000001" / "state.data")
    with CheckpointManager(ckpt_dir) as manager, pytest.raises(CheckpointCorruptError) as info:
        manager.restore(fallback=True)
    assert info.value.step == 3  # the newest step's error, when none is intact
