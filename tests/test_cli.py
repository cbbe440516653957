from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import alphatriangle
from alphatriangle.data import CheckpointManager


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "alphatriangle.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def test_package_imports_with_version() -> None:
    assert alphatriangle.__version__.count(".") >= 2


def test_help_lists_commands() -> None:
    result = _cli("--help")
    assert result.returncode == 0, result.stderr
    for command in ("demo", "list", "verify", "version"):
        assert command in result.stdout


def test_demo_trains_checkpoints_and_resumes(tmp_path: Path) -> None:
    directory = tmp_path / "ckpt"
    first = _cli("demo", "--directory", str(directory), "--steps", "45")
    assert first.returncode == 0, first.stderr
    assert "restores the live weights exactly: True" in first.stdout
    second = _cli("demo", "--directory", str(directory), "--steps", "20")
    assert second.returncode == 0, second.stderr
    assert "resumed from step 45" in second.stdout
    with CheckpointManager(directory) as manager:
        assert manager.latest_step() == 65


def test_verify_flags_a_corrupt_step(tmp_path: Path) -> None:
    directory = tmp_path / "ckpt"
    assert _cli("demo", "--directory", str(directory), "--steps", "40").returncode == 0
    assert _cli("verify", str(directory)).returncode == 0
    data = directory / "step_000000040" / "state.data"
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0xFF
    data.write_bytes(bytes(raw))
    result = _cli("verify", str(directory))
    assert result.returncode == 1
    assert "step 40" in result.stderr and "checksum mismatch" in result.stderr
    listing = _cli("list", str(directory))
    assert listing.returncode == 0 and "loss" in listing.stdout


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (Path.touch, (self.marker,))


def test_inspecting_commands_never_unpickle(tmp_path: Path) -> None:
    directory, marker = tmp_path / "ckpt", tmp_path / "code-ran"
    with CheckpointManager(directory) as manager:
        manager.save(0, {"hook": _Payload(marker)}, metrics={"loss": 1.0})
    assert _cli("verify", str(directory)).returncode == 0
    assert _cli("list", str(directory)).returncode == 0
    assert not marker.exists(), "an inspecting command ran code from the checkpoint"
