from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

import alphatriangle
from alphatriangle.data import CheckpointManager, CheckpointManagerOptions, KeepAll


def _entry_point() -> list[str]:
    """The installed ``alphatriangle`` script beside this interpreter (what users run)."""
    script = Path(sys.executable).parent / "alphatriangle"
    return [str(script)] if script.exists() else [sys.executable, "-m", "alphatriangle.cli"]


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_entry_point(), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def _write_steps(directory: Path, steps: list[int]) -> torch.nn.Module:
    model = torch.nn.Linear(4, 3)
    with CheckpointManager(directory, CheckpointManagerOptions(retention=KeepAll())) as manager:
        for step in steps:
            state = {"model": model.state_dict(), "step": step}
            manager.save(step, state, metrics={"loss": 1.0 / (step + 1)})
    return model


def test_package_imports_with_version() -> None:
    assert alphatriangle.__version__.count(".") >= 2
    result = _cli("version")
    assert result.returncode == 0 and result.stdout.strip() == alphatriangle.__version__


def test_help_lists_commands() -> None:
    result = _cli("--help")
    assert result.returncode == 0, result.stderr
    for command in ("train", "ckpt", "version"):
        assert command in result.stdout
    ckpt = _cli("ckpt", "--help")
    for command in ("list", "inspect", "verify", "prune", "export"):
        assert command in ckpt.stdout


def test_verify_flags_a_corrupt_step(tmp_path: Path) -> None:
    directory = tmp_path / "ckpt"
    _write_steps(directory, [20, 40])
    assert _cli("ckpt", "verify", str(directory)).returncode == 0
    data = directory / "step_000000040" / "state.data"
    raw = bytearray(data.read_bytes())
    raw[10] ^= 0xFF
    data.write_bytes(bytes(raw))
    result = _cli("ckpt", "verify", str(directory))
    assert result.returncode == 1
    assert "step 40" in result.stderr and "checksum mismatch" in result.stderr
    assert str(data) in result.stderr
    assert "step 20: ok" in result.stdout  # the intact step is still reported intact
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

    from helpers import python

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
    from safetensors.torch import load_file

    out = tmp_path / "weights.safetensors"
    exported = _cli("ckpt", "export", "4", str(out), str(directory))
    assert exported.returncode == 0, exported.stderr
    assert torch.equal(load_file(str(out))["weight"], model.weight.detach())
