"""CheckpointManager behaviour: snapshots, handles, errors, options, allocation reuse."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_tree_equal, state_for_step

from alphatriangle.data import (
    CheckpointError,
    CheckpointManager,
    CheckpointManagerOptions,
    CheckpointNotFoundError,
    KeepAll,
    StepExistsError,
)


def test_restore_equals_state_when_save_returned(ckpt_dir: Path) -> None:
    weights = torch.zeros(1 << 20)
    table = np.zeros(1000)
    config = {"lr": 0.1, "tags": ["a"]}
    with CheckpointManager(ckpt_dir) as manager:
        handle = manager.save(0, {"w": weights, "t": table, "config": config})
        assert handle is not None and handle.staged.done()
        # The training loop goes on mutating everything in place right away.
        weights.add_(1.0)
        table += 5
        config["lr"] = 99.0
        config["tags"].append("b")
        handle.result(timeout=60)
        restored = manager.restore(0)
    assert torch.count_nonzero(restored["w"]) == 0
    assert not restored["t"].any()
    assert restored["config"] == {"lr": 0.1, "tags": ["a"]}


def test_handle_commits_and_step_is_listed(ckpt_dir: Path) -> None:
    with CheckpointManager(ckpt_dir) as manager:
        handle = manager.save(5, state_for_step(5), metrics={"loss": 0.5})
        assert handle is not None
        path = handle.committed.result(timeout=60)
        assert path == ckpt_dir / "step_000000005"
        assert manager.all_steps() == [5]
        assert manager.latest_step() == 5
        meta = manager.metadata(5)
    assert meta["step"] == 5 and meta["metrics"] == {"loss": 0.5}
    assert set(meta["files"]) == {"state.data", "state.index.json"}
    for entry in meta["files"].values():
        assert entry["size"] > 0 and len(entry["xxh3_64"]) == 16
    assert "torch" in meta["versions"]
    assert json.loads((path / "manifest.json").read_text())["step"] == 5


def test_reopen_sees_committed_steps(ckpt_dir: Path) -> None:
    with CheckpointManager(ckpt_dir, CheckpointManagerOptions(retention=KeepAll())) as m:
        for step in range(3):
            m.save(step, state_for_step(step))
    with CheckpointManager(ckpt_dir) as manager:
        assert manager.all_steps() == [0, 1, 2]
        assert_tree_equal(manager.restore(), state_for_step(2))
        assert_tree_equal(manager.restore(1), state_for_step(1))


def test_existing_step_needs_replace_and_force_never_overwrites(ckpt_dir: Path) -> None:
    # Orbax's force means "save even if not due" and never overwrites an existing step.
    with CheckpointManager(ckpt_dir) as manager:
        manager.save(1, {"v": torch.zeros(3)})
        manager.wait_until_finished()
        for force in (False, True):
            with pytest.raises(StepExistsError) as info:
                manager.save(1, {"v": torch.ones(3)}, force=force)
            assert info.value.step == 1
        manager.save(1, {"v": torch.ones(3)}, replace=True)
        manager.wait_until_finished()
        assert torch.equal(manager.restore(1)["v"], torch.ones(3))
        assert manager.all_steps() == [1]
    assert not [p for p in ckpt_dir.iterdir() if p.name.startswith(".step")]


def test_save_interval_and_force(ckpt_dir: Path) -> None:
    options = CheckpointManagerOptions(save_interval_steps=10, retention=KeepAll())
    with CheckpointManager(ckpt_dir, options) as manager:
        handles = {step: manager.save(step, {"s": step}) for step in range(25)}
        assert [s for s, h in handles.items() if h is not None] == [0, 10, 20]
        assert manager.save(23, {"s": 23}, force=True) is not None
        manager.wait_until_finished()
        assert manager.all_steps() == [0, 10, 20, 23]


def test_skip_when_queue_full_reports(ckpt_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    options = CheckpointManagerOptions(on_full="skip", retention=KeepAll())
    big = {"w": torch.randn(16 << 20)}  # 64 MB: the writer is still busy when save 2 comes
    with CheckpointManager(ckpt_dir, options) as manager:
        results = [manager.save(step, big) for step in range(5)]
        manager.wait_until_finished()
        skipped = [s for s, r in enumerate(results) if r is None]
        assert skipped, "five back-to-back 64 MB saves never found the queue full"
        assert manager.skipped_steps == skipped
        assert manager.all_steps() == [s for s, r in enumerate(results) if r is not None]
    assert "skipped checkpoint of step" in caplog.text


def test_wait_policy_bounds_in_flight_and_reuses_buffers(ckpt_dir: Path) -> None:
    options = CheckpointManagerOptions(max_pending=2, retention=KeepAll())
    with CheckpointManager(ckpt_dir, options) as manager:
        for step in range(8):
            manager.save(step, state_for_step(step, 4.0))
        manager.wait_until_finished()
        pool = manager._pool
        assert pool is not None
        assert pool.allocations <= 2  # one per slot, at the first save that used it
        for step in range(8, 12):
            manager.save(step, state_for_step(step, 4.0))
        manager.wait_until_finished()
        assert pool.allocations <= 2
        assert manager.all_steps() == list(range(12))


def test_restore_errors(ckpt_dir: Path) -> None:
    with CheckpointManager(ckpt_dir) as manager:
        with pytest.raises(CheckpointNotFoundError):
            manager.restore()
        manager.save(0, {"v": 1})
        manager.wait_until_finished()
        with pytest.raises(CheckpointNotFoundError) as info:
            manager.restore(7)
        assert info.value.step == 7


def test_read_only_manager_cannot_save_and_changes_nothing(ckpt_dir: Path) -> None:
    with CheckpointManager(ckpt_dir) as manager:
        manager.save(0, {"v": torch.arange(3)})
    (ckpt_dir / ".step_000000009.tmp-1-abcd").mkdir()
    before = sorted(p.name for p in ckpt_dir.iterdir())
    with CheckpointManager(ckpt_dir, CheckpointManagerOptions(read_only=True)) as reader:
        assert torch.equal(reader.restore()["v"], torch.arange(3))
        with pytest.raises(CheckpointError, match="read_only"):
            reader.save(1, {})
    assert sorted(p.name for p in ckpt_dir.iterdir()) == before


def test_closed_manager_refuses_work(ckpt_dir: Path) -> None:
    manager = CheckpointManager(ckpt_dir)
    manager.close()
    manager.close()  # idempotent
    with pytest.raises(CheckpointError, match="closed"):
        manager.save(0, {})
    with pytest.raises(CheckpointError, match="closed"):
        manager.restore()


def test_bad_arguments(ckpt_dir: Path) -> None:
    with CheckpointManager(ckpt_dir) as manager:
        with pytest.raises(ValueError, match="step"):
            manager.save(-1, {})
        with pytest.raises(TypeError, match="loss"):
            manager.save(0, {}, metrics={"loss": "low"})
        assert manager.all_steps() == []


def test_public_methods_are_thread_safe(ckpt_dir: Path) -> None:
    errors: list[BaseException] = []
    options = CheckpointManagerOptions(retention=KeepAll(), max_pending=2)
    with CheckpointManager(ckpt_dir, options) as manager:

        def saver(offset: int) -> None:
            try:
                for i in range(10):
                    manager.save(offset + i, state_for_step(offset + i, 0.2))
            except BaseException as exc:
                errors.append(exc)

        def restorer() -> None:
            try:
                for _ in range(20):
                    if manager.latest_step() is not None:
                        state = manager.restore()
                        assert_tree_equal(state, state_for_step(state["step"], 0.2))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=saver, args=(k * 100,)) for k in range(3)]
        threads += [threading.Thread(target=restorer) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        manager.wait_until_finished()
        assert not errors, errors
        assert manager.all_steps() == sorted(k * 100 + i for k in range(3) for i in range(10))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for machines without CUDA")
def test_cuda_checkpoint_on_a_cpu_machine_asks_for_map_location(ckpt_dir: Path) -> None:
    import xxhash

    from alphatriangle.data.checkpoint.manifest import canonical, seal

    with CheckpointManager(ckpt_dir) as manager:
        manager.save(0, {"w": torch.arange(4.0)})
    # Make the step say its tensor came from a GPU, as one saved on a GPU machine does.
    step_dir = ckpt_dir / "step_000000000"
    index = json.loads((step_dir / "state.index.json").read_text())
    index["arrays"][0]["device"] = "cuda:0"
    index_bytes = canonical(index)
    (step_dir / "state.index.json").write_bytes(index_bytes)
    manifest = json.loads((step_dir / "manifest.json").read_text())
    manifest.pop("checksum")
    manifest["files"]["state.index.json"] = {
        "size": len(index_bytes),
        "xxh3_64": xxhash.xxh3_64_hexdigest(index_bytes),
    }
    (step_dir / "manifest.json").write_bytes(seal(canonical(manifest)))
    with CheckpointManager(ckpt_dir, CheckpointManagerOptions(read_only=True)) as reader:
        with pytest.raises(CheckpointError, match="map_location='cpu'") as info:
            reader.restore()
        assert info.value.step == 0
        assert torch.equal(reader.restore(map_location="cpu")["w"], torch.arange(4.0))
