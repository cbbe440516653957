"""CUDA staging: pinned host buffers, a side stream, snapshot semantics on the device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from alphatriangle.data import CheckpointManager, CheckpointManagerOptions, KeepAll

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_cuda_round_trip_and_map_location(ckpt_dir: Path) -> None:
    state = {
        "w": torch.randn(1024, 1024, device="cuda"),
        "bf16": torch.randn(333, device="cuda").to(torch.bfloat16),
        "cpu": torch.arange(10),
    }
    with CheckpointManager(ckpt_dir) as manager:
        manager.save(0, state)
        manager.wait_until_finished()
        on_device = manager.restore(0)
        on_cpu = manager.restore(0, map_location="cpu")
    assert on_device["w"].is_cuda and torch.equal(on_device["w"], state["w"])
    assert torch.equal(on_device["bf16"], state["bf16"])
    assert on_cpu["w"].device.type == "cpu" and torch.equal(on_cpu["w"], state["w"].cpu())


def test_cuda_snapshot_ignores_later_kernels(ckpt_dir: Path) -> None:
    weights = torch.zeros(64 << 20, device="cuda")  # 256 MB
    expected = weights.clone()
    with CheckpointManager(ckpt_dir) as manager:
        weights.add_(1.0)  # queued before save: must be captured
        expected.add_(1.0)
        manager.save(0, {"w": weights})
        weights.mul_(0.0)  # queued after save returned: must not be captured
        manager.wait_until_finished()
        restored = manager.restore(0)["w"]
    assert torch.equal(restored, expected)


def test_cuda_staging_uses_one_pinned_buffer_reused(ckpt_dir: Path) -> None:
    options = CheckpointManagerOptions(retention=KeepAll())
    with CheckpointManager(ckpt_dir, options) as manager:
        for step in range(4):
            manager.save(step, {"w": torch.full((1 << 20,), float(step), device="cuda")})
        manager.wait_until_finished()
        pool = manager._pool
        assert pool is not None
        assert pool.allocations == 1
        assert all(buffer.pinned for buffer in pool.buffers())
        assert manager.restore(3)["w"][0].item() == 3.0


@pytest.mark.parametrize("mode", ["mmap", "copy"])
def test_cuda_restore_streams_through_small_pinned_chunks(ckpt_dir: Path, mode: str) -> None:
    from alphatriangle.data.checkpoint.mapping import PinnedChunks

    generator = torch.Generator().manual_seed(0)
    state = {
        "big": torch.randn(3 << 20, generator=generator).cuda(),  # 12 MB: many chunks
        "small": [torch.randn(n, generator=generator).cuda() for n in (1, 7, 1000)],
        "half": torch.randn(5000, generator=generator).half().cuda(),
        "empty": torch.empty(0, device="cuda"),
        "array": torch.randn(100, generator=generator).numpy(),
    }
    options = CheckpointManagerOptions(restore_mode=mode)  # type: ignore[arg-type]
    with CheckpointManager(ckpt_dir, options) as manager:
        manager._pinned = PinnedChunks(chunk_bytes=1 << 20)
        manager.save(0, state)
        manager.wait_until_finished()
        restored = manager.restore(0)
        restored["big"].add_(1.0)  # a fresh device tensor: the step is untouched
        again = manager.restore(0)
    assert torch.equal(again["big"], state["big"])
    assert all(torch.equal(a, b) for a, b in zip(again["small"], state["small"], strict=True))
    assert again["half"].dtype == torch.float16 and torch.equal(again["half"], state["half"])
    assert again["empty"].is_cuda and again["empty"].numel() == 0
    assert (again["array"] == state["array"]).all()


def test_cuda_raw_dtypes_map_location_forms_and_in_place_restore(ckpt_dir: Path) -> None:
    state = {
        "w": torch.randn(4096, device="cuda"),
        "scales": torch.arange(64, dtype=torch.uint8, device="cuda").view(torch.float8_e8m0fnu),
        "nibbles": torch.arange(32, dtype=torch.uint8, device="cuda").view(torch.uint4),
        "host": torch.ones(8),
    }
    with CheckpointManager(ckpt_dir) as manager:
        manager.save(0, state)
        manager.wait_until_finished()
        restored = manager.restore(0)
        for key, value in state.items():
            got = restored[key]
            assert got.device == value.device and got.dtype == value.dtype, key
            assert torch.equal(got.view(torch.uint8).cpu(), value.view(torch.uint8).cpu()), key
        to_cpu = manager.restore(0, map_location={"cuda:0": "cpu"})
        assert to_cpu["w"].device.type == "cpu" and torch.equal(to_cpu["w"], state["w"].cpu())
        kept = manager.restore(0, map_location=lambda storage, location: None)
        assert kept["w"].is_cuda
        target = {
            "w": torch.zeros(4096, device="cuda"),
            "scales": torch.zeros(64, dtype=torch.uint8, device="cuda").view(torch.float8_e8m0fnu),
            "nibbles": torch.zeros(32, dtype=torch.uint8, device="cuda").view(torch.uint4),
            "host": torch.zeros(8),
        }
        pointer = target["w"].data_ptr()
        filled = manager.restore(0, target=target)
    assert filled is target and target["w"].data_ptr() == pointer
    assert torch.equal(target["w"], state["w"])
    assert torch.equal(target["nibbles"].view(torch.uint8), state["nibbles"].view(torch.uint8))
