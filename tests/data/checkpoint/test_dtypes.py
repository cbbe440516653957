"""Every dtype a torch tensor can have round-trips: dense ones as raw bytes, quantized ones
(which need their scale) through the pickle."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from helpers import assert_tree_equal

from alphatriangle.data import CheckpointManager, CheckpointManagerOptions, KeepAll
from alphatriangle.data.checkpoint.arrays import TORCH_DTYPES

ALL_DTYPES = sorted({v for v in vars(torch).values() if isinstance(v, torch.dtype)}, key=str)


def _tensor_of(dtype: torch.dtype) -> torch.Tensor | None:
    """A tensor of ``dtype`` with varied bytes; None when torch cannot make one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # complex32 and quantized creation warn
        generator = torch.Generator().manual_seed(0)
        if dtype in (torch.qint8, torch.quint8, torch.qint32, torch.quint4x2, torch.quint2x4):
            try:
                return torch.quantize_per_tensor(
                    torch.randn(16, generator=generator), 0.1, 3, dtype
                )
            except RuntimeError:
                return None
        raw = torch.randint(0, 256, (64,), dtype=torch.uint8, generator=generator)
        return raw.view(dtype)


def _bytes_of(tensor: torch.Tensor) -> bytes:
    source = tensor.int_repr() if tensor.is_quantized else tensor.contiguous().view(torch.uint8)
    return bytes(source.numpy())


def test_every_torch_dtype_round_trips(ckpt_dir: Path) -> None:
    warnings.simplefilter("ignore")  # complex32 warns that it is experimental
    made = {dtype: t for dtype in ALL_DTYPES if (t := _tensor_of(dtype)) is not None}
    assert len(made) >= 40, "the sweep must cover torch's dtypes"
    dense = [d for d, t in made.items() if not t.is_quantized]
    assert all(str(d).removeprefix("torch.") in TORCH_DTYPES for d in dense), "all dense raw"
    options = CheckpointManagerOptions(retention=KeepAll())
    with CheckpointManager(ckpt_dir, options) as manager:
        for step, (dtype, tensor) in enumerate(made.items()):
            alone = tensor if tensor.is_quantized else torch.ones(16, dtype=torch.uint8).view(dtype)
            state = {"t": tensor, "view": tensor[2:10], "alone": alone}
            manager.save(step, state)
            manager.wait_until_finished()
            restored = manager.restore(step, weights_only=not tensor.is_quantized)
            for key, expected in state.items():
                got = restored[key]
                assert got.dtype == dtype, (dtype, key)
                assert got.shape == expected.shape, (dtype, key)
                assert _bytes_of(got) == _bytes_of(expected), (dtype, key)
            if tensor.is_quantized:
                assert restored["t"].q_scale() == tensor.q_scale()
            else:
                assert restored["view"].untyped_storage().data_ptr() == (
                    restored["t"].untyped_storage().data_ptr()
                ), f"{dtype}: views share their storage again"


def test_raw_dtypes_in_state_dicts_and_parameters(ckpt_dir: Path) -> None:
    state = {
        "mx": {
            "scales": torch.ones(8).view(torch.uint8)[:8].view(torch.float8_e8m0fnu),
            "fp4": torch.zeros(8, dtype=torch.uint8).view(torch.float4_e2m1fn_x2),
        },
        "bits": torch.arange(16, dtype=torch.int16).view(torch.bits16),
        "nibbles": torch.arange(8, dtype=torch.uint8).view(torch.uint4),
    }
    with CheckpointManager(ckpt_dir) as manager:
        manager.save(0, state)
        manager.wait_until_finished()
        assert_tree_equal(manager.restore(0, weights_only=True), state)
