"""Signed checkpoints: a step changed by someone who recomputes every xxh3 checksum is still
refused, and so is an unsigned one, when a signing key is set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import assert_tree_equal, forge_step, state_for_step
from pydantic import ValidationError

from alphatriangle.data import (
    CheckpointManager,
    CheckpointManagerOptions,
    CheckpointSignatureError,
    KeepAll,
)

KEY = b"0123456789abcdef-test-key"
SIGNED = CheckpointManagerOptions(signing_key=KEY, retention=KeepAll())


def test_signed_steps_restore_and_carry_signatures(ckpt_dir: Path) -> None:
    with CheckpointManager(ckpt_dir, SIGNED) as manager:
        manager.save(1, state_for_step(1))
        manager.wait_until_finished()
        assert_tree_equal(manager.restore(1), state_for_step(1))
        manager.verify(1)
    raw = json.loads((ckpt_dir / "step_000000001" / "manifest.json").read_bytes())
    assert len(raw["signature"]) == 64
    assert all(len(entry["sha256_chunked"]) == 64 for entry in raw["files"].values())
    assert "signing_key" not in repr(SIGNED) and KEY.decode() not in repr(SIGNED)


def test_tampered_data_with_recomputed_checksums_is_refused(ckpt_dir: Path) -> None:
    with CheckpointManager(ckpt_dir, SIGNED) as manager:
        manager.save(1, {"w": torch.zeros(8)})
    step_dir = ckpt_dir / "step_000000001"
    forged = torch.ones(8).numpy().tobytes()
    forge_step(step_dir, files={"state.data": forged})
    # Without the key, the forgery passes every check: that is what signing is for.
    with CheckpointManager(ckpt_dir, CheckpointManagerOptions(read_only=True)) as reader:
        assert reader.restore(1)["w"].sum() == 8
    with CheckpointManager(ckpt_dir, SIGNED) as manager:
        with pytest.raises(CheckpointSignatureError, match="signature does not match") as info:
            manager.restore(1)
        assert info.value.path == str(step_dir / "manifest.json")
        with pytest.raises(CheckpointSignatureError):
            manager.verify(1)


def test_a_replaced_file_under_a_signed_manifest_is_named(ckpt_dir: Path) -> None:
    with CheckpointManager(ckpt_dir, SIGNED) as manager:
        manager.save(1, {"w": torch.zeros(8)})
    data = ckpt_dir / "step_000000001" / "state.data"
    data.write_bytes(torch.ones(8).numpy().tobytes())  # same size, manifest untouched
    manager = CheckpointManager(ckpt_dir, SIGNED)
    with pytest.raises(CheckpointSignatureError, match="tampered") as info:
        manager.restore(1)
    assert info.value.path == str(data)
    manager.close()


def test_a_forged_manifest_is_refused(ckpt_dir: Path) -> None:
    with CheckpointManager(ckpt_dir, SIGNED) as manager:
        manager.save(1, {"w": torch.zeros(8)}, metrics={"loss": 5.0})
    forge_step(ckpt_dir / "step_000000001", manifest=lambda m: m["metrics"].update(loss=0.1))
    manager = CheckpointManager(ckpt_dir, SIGNED)
    with pytest.raises(CheckpointSignatureError, match="signature does not match"):
        manager.restore(1)
    manager.close()


def test_unsigned_and_other_key_steps_are_refused_and_skipped_by_fallback(
    ckpt_dir: Path,
) -> None:
    with CheckpointManager(ckpt_dir, SIGNED) as manager:
        manager.save(1, {"w": torch.full((4,), 1.0)})
    with CheckpointManager(ckpt_dir, CheckpointManagerOptions(retention=KeepAll())) as plain:
        plain.save(2, {"w": torch.full((4,), 2.0)})
    other = CheckpointManagerOptions(signing_key=b"another key of 16+ bytes", retention=KeepAll())
    with CheckpointManager(ckpt_dir, other) as manager:
        manager.save(3, {"w": torch.full((4,), 3.0)})
    with CheckpointManager(ckpt_dir, SIGNED) as manager:
        with pytest.raises(CheckpointSignatureError, match="not signed"):
            manager.restore(2)
        with pytest.raises(CheckpointSignatureError, match="another key"):
            manager.restore(3)
        assert manager.restore(fallback=True)["w"][0] == 1.0


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValidationError, match="at least 16 bytes"):
        CheckpointManagerOptions(signing_key=b"short")
