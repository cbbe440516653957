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
    for command in ("demo", "ckpt", "version"):
        assert command in result.stdout
    ckpt = _cli("ckpt", "--help")
    for command in ("list", "inspect", "verify", "prune", "export"):
        assert command in ckpt.stdout


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
    assert _cli("ckpt", "verify", str(directory)).returncode == 0
    data = directory / "step_000000040" / "state.data"
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0xFF
    data.write_bytes(bytes(raw))
    result = _cli("ckpt", "verify", str(directory))
    assert result.returncode == 1
    assert "step 40" in result.stderr and "checksum mismatch" in result.stderr
    assert str(data) in result.stderr
    listing = _cli("ckpt", "list", str(directory))
    assert listing.returncode == 0 and "loss" in listing.stdout and "items=state" in listing.stdout


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (Path.touch, (self.marker,))


def test_inspecting_commands_never_unpickle(tmp_path: Path) -> None:
    directory, marker = tmp_path / "ckpt", tmp_path / "code-ran"
    with CheckpointManager(directory) as manager:
        manager.save(0, {"hook": _Payload(marker)}, metrics={"loss": 1.0})
    assert _cli("ckpt", "verify", str(directory)).returncode == 0
    assert _cli("ckpt", "list", str(directory)).returncode == 0
    assert _cli("ckpt", "inspect", "0", str(directory)).returncode == 0
    assert not marker.exists(), "an inspecting command ran code from the checkpoint"


def test_inspect_prune_and_export(tmp_path: Path) -> None:
    import json
    import signal
    import subprocess as sp

    import torch
    from helpers import python

    from alphatriangle.data import CheckpointManagerOptions, KeepAll

    directory = tmp_path / "run" / "checkpoints"
    model = torch.nn.Linear(3, 2)
    with CheckpointManager(directory, CheckpointManagerOptions(retention=KeepAll())) as m:
        for step in range(5):
            m.save(step, {"model": model.state_dict(), "step": step}, metrics={"loss": 5.0 - step})
    inspected = _cli("ckpt", "inspect", "4", str(tmp_path / "run"), "--json")
    assert inspected.returncode == 0, inspected.stderr
    report = json.loads(inspected.stdout)
    assert report["items"]["state"]["model"]["weight"]["shape"] == [2, 3]
    dry = _cli("ckpt", "prune", str(directory), "--keep-latest", "2")
    assert dry.returncode == 0 and "would delete [0, 1, 2]" in dry.stdout
    with CheckpointManager(directory, CheckpointManagerOptions(read_only=True)) as reader:
        assert reader.all_steps() == [0, 1, 2, 3, 4]  # a dry run deletes nothing
    holder = sp.Popen([*python(), "hold-writer", str(directory)], stdout=sp.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        refused = _cli("ckpt", "prune", str(directory), "--keep-latest", "2", "--yes")
        assert refused.returncode == 1 and "locked by another writer" in refused.stderr
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    done = _cli("ckpt", "prune", str(tmp_path), "--keep-latest", "2", "--yes")
    assert done.returncode == 0, done.stderr
    with CheckpointManager(directory, CheckpointManagerOptions(read_only=True)) as reader:
        assert reader.all_steps() == [3, 4]
    out = tmp_path / "weights.pt"
    exported = _cli("ckpt", "export", "4", str(out), str(directory))
    assert exported.returncode == 0, exported.stderr
    weights = torch.load(out, weights_only=True)
    assert torch.equal(weights["weight"], model.weight.detach())
