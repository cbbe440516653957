from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
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
    assert _cli("ckpt", "inspect", str(directory), "--step", "0").returncode == 0
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
    inspected = _cli("ckpt", "inspect", str(tmp_path / "run"), "--step", "4", "--json")
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
    exported = _cli("ckpt", "export", str(directory), str(out), "--step", "4")
    assert exported.returncode == 0, exported.stderr
    weights = torch.load(out, weights_only=True)
    assert torch.equal(weights["weight"], model.weight.detach())
    from safetensors.torch import load_file

    out = tmp_path / "weights.safetensors"
    exported = _cli("ckpt", "export", str(directory), str(out), "--step", "4")
    assert exported.returncode == 0, exported.stderr
    assert torch.equal(load_file(str(out))["weight"], model.weight.detach())


def _one_line_error(result: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    """A user error: exit ``code``, one line on stderr naming the cause, no traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def _two_runs(root: Path) -> dict[str, torch.nn.Module]:
    """A data root with two runs of steps 1 and 2: a model, a head elsewhere than "model"
    (returned, by run), and a few other leaves."""
    import collections
    import fractions

    models = {}
    for run in ("first_run", "second_run"):
        directory = root / "runs" / run / "checkpoints"
        with CheckpointManager(directory, CheckpointManagerOptions(retention=KeepAll())) as m:
            for step in (1, 2):
                model, models[run] = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
                state = {
                    "model": model.state_dict(),
                    "lr": 0.001,
                    "name": run,
                    "ratio": fractions.Fraction(1, 3),
                    "nothing": None,
                    "ordered": collections.OrderedDict(a=step),
                    "net": {"head": models[run].state_dict()},
                }
                m.save(step, state, metrics={"loss": 1.0 / step})
    return models


@pytest.mark.slow
def test_inspect_and_export_take_path_first_and_choose_a_run(tmp_path: Path) -> None:
    import json

    root = tmp_path / "root"
    models = _two_runs(root)
    # Several runs: inspect and export ask for --run, naming the runs.
    _one_line_error(_cli("ckpt", "inspect", str(root)), 2, "first_run", "second_run", "--run")
    _one_line_error(
        _cli("ckpt", "export", str(root), str(tmp_path / "w.pt")), 2, "first_run", "--run"
    )
    _one_line_error(_cli("ckpt", "inspect", str(root), "--run", "third"), 2, "third")
    # The newest step by default; every leaf in the text.
    text = _cli("ckpt", "inspect", str(root), "--run", "second_run")
    assert text.returncode == 0, text.stderr
    assert "step 2 in" in text.stdout and "second_run" in text.stdout
    for line in (
        "state['model']['weight']: torch float32 (2, 3) on cpu",
        "state['lr']: 0.001",
        "state['name']: 'second_run'",
        "state['ratio']: pickled fractions.Fraction",
        "state['nothing']: None",
        "state['ordered']['a']: 2",
    ):
        assert line in text.stdout, line
    report = json.loads(_cli("ckpt", "inspect", str(root / "runs" / "first_run"), "--json").stdout)
    assert report["step"] == 2
    assert report["items"]["state"]["ratio"]["type"] == "fractions.Fraction"
    # export: PATH OUT, the newest step, --key for a subtree elsewhere than "model".
    out = tmp_path / "head.pt"
    exported = _cli(
        "ckpt", "export", str(root), str(out), "--run", "first_run", "--key", "net.head"
    )
    assert exported.returncode == 0, exported.stderr
    assert "of step 2" in exported.stdout
    assert torch.equal(torch.load(out, weights_only=True)["weight"], models["first_run"].weight)
    # list, verify and prune cover every run.
    listing = _cli("ckpt", "list", str(root))
    assert listing.returncode == 0
    assert "first_run" in listing.stdout and "second_run" in listing.stdout
    verified = _cli("ckpt", "verify", str(root))
    assert verified.returncode == 0 and verified.stdout.count(": ok") == 4


@pytest.mark.slow
def test_every_user_error_is_one_line(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _two_runs(root)
    run = root / "runs" / "first_run"
    _one_line_error(_cli("ckpt", "inspect", str(tmp_path / "nowhere")), 2, "does not exist")
    _one_line_error(_cli("ckpt", "inspect", str(run), "--step", "7"), 1, "step 7")
    _one_line_error(
        _cli("ckpt", "export", str(run), str(tmp_path / "w.pt"), "--key", "optimizer"),
        1,
        "optimizer",
    )
    _one_line_error(
        _cli("ckpt", "prune", str(root), "--keep-best", "1", "--metric", "accuracy"),
        1,
        "accuracy",
    )
    manifest = run / "checkpoints" / "step_000000002" / "manifest.json"
    manifest.write_text("{not json")
    _one_line_error(_cli("ckpt", "inspect", str(run)), 1, "manifest.json")


@pytest.mark.slow
def test_verify_checks_signatures_with_a_key_file(tmp_path: Path) -> None:
    key = b"0123456789abcdef0123456789abcdef"
    directory = tmp_path / "signed"
    options = CheckpointManagerOptions(signing_key=key)
    with CheckpointManager(directory, options) as manager:
        manager.save(1, {"w": torch.ones(3)})
    unchecked = _cli("ckpt", "verify", str(directory))
    assert unchecked.returncode == 0 and "signatures not checked" in unchecked.stdout
    key_file = tmp_path / "key"
    key_file.write_bytes(key)
    checked = _cli("ckpt", "verify", str(directory), "--signing-key-file", str(key_file))
    assert checked.returncode == 0 and "signature verified" in checked.stdout
    assert "not checked" not in checked.stdout
    key_file.write_bytes(b"another key of 32 bytes, wrong!!")
    wrong = _cli("ckpt", "verify", str(directory), "--signing-key-file", str(key_file))
    _one_line_error(wrong, 1, "step 1")


def test_help_reads_as_prose() -> None:
    import os

    wide = {**os.environ, "COLUMNS": "400"}
    for command in ("list", "inspect", "verify", "prune", "export"):
        result = subprocess.run(
            [*_entry_point(), "ckpt", command, "--help"],
            capture_output=True,
            text=True,
            env=wide,
            timeout=120,
        )
        assert result.returncode == 0 and "``" not in result.stdout, result.stdout
        if command == "export":  # one paragraph: one line at this width
            assert any(
                "Write the model weights" in line and "Nothing is unpickled" in line
                for line in result.stdout.splitlines()
            ), result.stdout
