"""Several ranks, one step: DCP plans, this engine's files, one commit; resharded restore.

Real processes (spawned), gloo on CPU, real files; a rank really SIGKILLed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from distributed_ranks import (
    GROUP_TIMEOUT_S,
    fail_on_one_rank,
    killed_before_commit,
    killed_mid_save,
    restore_training,
    retention_and_preemption,
    run_ranks,
    save_training,
    signed_steps,
    start_ranks,
)

from alphatriangle.data import CheckpointError, CheckpointManager, CheckpointManagerOptions
from alphatriangle.data.checkpoint.layout import scan_leftovers

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("saved", "restored"), [(2, 3), (4, 1)])
def test_resharded_restore_is_exact(tmp_path: Path, saved: int, restored: int) -> None:
    # Row-sharded DTensors with uneven rows, a replicated DTensor, a plain tensor, Adam state
    # of a DTensor-sharded model, other leaves; every tensor changed right after staging.
    run_ranks(save_training, saved, str(tmp_path), 7, 1)
    manifest = json.loads((tmp_path / "step_000000007" / "manifest.json").read_text())
    shards = {name for name in manifest["files"] if ".shards-" in name}
    assert shards == {f"state.shards-{rank:05d}.data" for rank in range(saved)}
    run_ranks(restore_training, restored, str(tmp_path), 7)
    _read_alone(tmp_path)


def _read_alone(tmp_path: Path) -> None:
    """This process alone, without torch.distributed, fills full-size plain tensors from the
    step the ranks saved: the engine's own consolidation."""
    expected = torch.load(tmp_path / "expected_7.pt", weights_only=False)
    target = {
        "table": torch.zeros(7, 4),
        "replicated": torch.zeros(3, 3),
        "plain": torch.zeros(3, 4, dtype=torch.float64),
        "counters": {"step": 0, "seen_by": -1, "note": ""},
    }
    with CheckpointManager(tmp_path, CheckpointManagerOptions(read_only=True)) as manager:
        manager.restore(7, target=target)
        with pytest.raises(CheckpointError, match="target="):
            manager.restore(7)
    for key in ("table", "replicated", "plain"):
        assert torch.equal(target[key], expected[key]), key
    assert target["counters"] == expected["counters"]


@pytest.mark.parametrize("option", [{"on_full": "skip"}, {"incremental": True}])
def test_options_a_group_cannot_honour_are_refused(tmp_path: Path, option: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="process_group"):
        CheckpointManager(tmp_path, CheckpointManagerOptions(**option), process_group=object())


def test_a_failure_on_one_rank_reaches_every_rank(tmp_path: Path) -> None:
    run_ranks(fail_on_one_rank, 2, str(tmp_path), 1)


def test_retention_and_preemption_agree_on_every_rank(tmp_path: Path) -> None:
    run_ranks(retention_and_preemption, 2, str(tmp_path))


def test_signed_steps_of_several_ranks(tmp_path: Path) -> None:
    run_ranks(signed_steps, 2, str(tmp_path))


def test_a_rank_killed_mid_save(tmp_path: Path) -> None:
    outcome = tmp_path / "outcome.json"
    context = start_ranks(killed_mid_save, 2, str(tmp_path), 1, str(outcome))
    for process in context.processes:
        process.join(GROUP_TIMEOUT_S + 30)
    assert context.processes[1].exitcode == -9  # SIGKILL
    survivor = json.loads(outcome.read_text())
    assert survivor["error"] is not None and "lost contact" in survivor["error"]
    assert survivor["s"] < GROUP_TIMEOUT_S + 5
    assert not (tmp_path / "step_000000005").exists()
    assert all(leftover.step == 5 for leftover in scan_leftovers(tmp_path))
    with CheckpointManager(tmp_path) as manager:  # the next open sweeps the leftovers
        assert manager.all_steps() == []
    assert scan_leftovers(tmp_path) == []


def test_a_ddp_loop_under_torchrun_saves_and_resumes(tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    script = Path(__file__).with_name("ddp_loop.py")
    for phase in ("train", "resume"):
        done = subprocess.run(
            [
                str(torchrun),
                "--standalone",
                "--nproc-per-node",
                "2",
                str(script),
                str(tmp_path),
                phase,
            ],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]


def test_every_rank_killed_between_the_writes_and_the_commit(tmp_path: Path) -> None:
    context = start_ranks(killed_before_commit, 2, str(tmp_path))
    for process in context.processes:
        process.join(GROUP_TIMEOUT_S + 30)
    assert [process.exitcode for process in context.processes] == [-9, -9]
    with CheckpointManager(tmp_path) as manager:  # sweeps what the killed save left
        steps = manager.all_steps()
        assert steps in ([1], [1, 2]), steps  # step 2: committed whole, or not at all
        for step in steps:
            manager.verify(step)
        target = {"weights": torch.zeros(2048)}
        manager.restore(1, target=target)
        assert torch.equal(target["weights"], torch.arange(2048.0))
    assert scan_leftovers(tmp_path) == []
