"""Staging reuses the placement of the previous save only when every leaf still fits it."""

from __future__ import annotations

import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from helpers import assert_tree_equal
from hypothesis import given
from test_roundtrip import _trees

from alphatriangle.data import CheckpointManager, CheckpointManagerOptions, KeepAll
from alphatriangle.data.checkpoint.staging import HostBuffer, stage_state


def _save_all(directory: Path, states: list[Any]) -> None:
    with CheckpointManager(directory, CheckpointManagerOptions(retention=KeepAll())) as m:
        for step, state in enumerate(states):
            m.save(step, state)
        m.wait_until_finished()
        for step, state in enumerate(states):
            assert_tree_equal(m.restore(step), state, f"step {step}")


@given(states=st.lists(_trees, min_size=2, max_size=4))
def test_sequences_of_trees_through_one_manager_round_trip(
    tmp_path_factory: pytest.TempPathFactory, states: list[Any]
) -> None:
    _save_all(tmp_path_factory.mktemp("seq"), states)


def _model(*, mixed: bool = False, **changes: Any) -> OrderedDict[str, Any]:
    """Five float tensors; ``mixed``: a numpy array among them (the signature of a mixed
    state is built another way than an all-torch one's)."""
    state: OrderedDict[str, Any] = OrderedDict(
        (f"layer{i}.weight", torch.full((4, 3), float(i))) for i in range(5)
    )
    if mixed:
        state["counts"] = np.arange(6, dtype=np.int64)
    state.update(changes)
    return state


VARIANTS: dict[str, dict[str, Any]] = {
    "same shapes, new values": {"layer0.weight": torch.full((4, 3), 9.0)},
    "a shape changed, same bytes": {"layer1.weight": torch.ones(3, 4)},
    "a dtype changed": {"layer2.weight": torch.ones(4, 3, dtype=torch.float64)},
    "requires_grad": {"layer3.weight": torch.ones(4, 3, requires_grad=True)},
    "a parameter": {"layer3.weight": torch.nn.Parameter(torch.ones(4, 3))},
    "numpy in place of torch": {"layer4.weight": np.ones((4, 3), np.float32)},
    "a sparse tensor": {"layer4.weight": torch.eye(3).to_sparse()},
    "a non-contiguous view": {"layer0.weight": torch.arange(24.0).view(3, 8)[:, ::2]},
    "the array's dtype changed": {"counts": np.arange(6, dtype=np.int32)},
    "the array's shape changed": {"counts": np.arange(6, dtype=np.int64).reshape(2, 3)},
}


@pytest.mark.parametrize("mixed", [False, True], ids=["torch", "with numpy"])
@pytest.mark.parametrize("variant", list(VARIANTS), ids=list(VARIANTS))
def test_each_change_of_leaves_is_placed_anew(ckpt_dir: Path, variant: str, mixed: bool) -> None:
    changed = _model(mixed=mixed, **VARIANTS[variant])
    if variant == "a sparse tensor":
        with CheckpointManager(ckpt_dir) as manager:
            manager.save(0, _model(mixed=mixed))
            manager.save(1, changed)
            manager.wait_until_finished()
            # A sparse tensor travels through the pickle: only a trusted restore rebuilds it.
            restored = manager.restore(1, weights_only=False)["layer4.weight"]
        assert restored.is_sparse and torch.equal(restored.to_dense(), torch.eye(3))
        return
    _save_all(ckpt_dir, [_model(mixed=mixed), changed, _model(mixed=mixed)])


def test_the_placement_is_reused_while_leaves_fit_it() -> None:
    buffer = HostBuffer()
    first = stage_state(_model(), buffer)
    layout = buffer.staging_layout
    second = stage_state(_model(**{"layer0.weight": torch.full((4, 3), 7.0)}), buffer)
    assert buffer.staging_layout is layout and buffer.allocations == 1
    assert second.arrays == first.arrays
    assert second.tree == {"oda": [0, [f"layer{i}.weight" for i in range(5)]]}
    stage_state(_model(**{"layer1.weight": torch.ones(3, 4)}), buffer)
    assert buffer.staging_layout is not layout


def test_large_tensors_are_copied_whatever_their_layout_becomes(ckpt_dir: Path) -> None:
    # A later save of the same shapes (the placement reused, with its copy plan) with
    # transposed, conjugated or negated views must still be exact: the copy resolves them.
    square = torch.randn(600, 600)  # 1.4 MB
    complex_ = torch.randn(400, 400, dtype=torch.complex64)
    weight = torch.nn.Parameter(torch.randn(300, 1000, dtype=torch.bfloat16))
    flags = torch.rand(1 << 21) > 0.5
    scalar = torch.tensor(3.0)  # negated, still contiguous: only the bit tells
    states = [
        {"m": square, "c": complex_, "w": weight, "b": flags, "s": scalar},
        {"m": square.t(), "c": complex_.conj(), "w": weight, "b": ~flags, "s": scalar},
        {"m": torch._neg_view(square), "c": complex_, "w": weight, "b": flags, "s": scalar},
        {"m": square, "c": complex_, "w": weight, "b": flags, "s": torch._neg_view(scalar)},
    ]
    with CheckpointManager(ckpt_dir, CheckpointManagerOptions(retention=KeepAll())) as m:
        for step, state in enumerate(states):
            m.save(step, state)
        m.wait_until_finished()
        for step, state in enumerate(states):
            restored = m.restore(step)
            for key, value in state.items():
                expected = value.detach().resolve_conj().resolve_neg()
                assert torch.equal(restored[key].detach(), expected), (step, key)
            assert type(restored["w"]) is torch.nn.Parameter


def test_large_arrays_are_copied_whatever_their_layout_becomes(ckpt_dir: Path) -> None:
    # A large contiguous, writeable array is copied as a tensor over its memory; a later save
    # of the same shape and dtype (the placement reused) as a Fortran-ordered or read-only
    # array must still be exact, and warn of nothing; a big-endian one is placed anew.
    values = np.arange(1024 * 1024, dtype=np.float32).reshape(1024, 1024)  # 4 MiB
    read_only = values.copy()
    read_only.flags.writeable = False
    states = [
        {"a": values},
        {"a": np.asfortranarray(values[::-1])},
        {"a": read_only},
        {"a": values.astype(">f4")},
        {"a": values[::-1]},  # negative strides: no tensor can view it
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with CheckpointManager(ckpt_dir, CheckpointManagerOptions(retention=KeepAll())) as m:
            for step, state in enumerate(states):
                m.save(step, state)
            m.wait_until_finished()
            for step, state in enumerate(states):
                restored = m.restore(step)["a"]
                assert restored.dtype == state["a"].dtype, step
                np.testing.assert_array_equal(restored, state["a"], err_msg=f"step {step}")


@pytest.mark.parametrize("grad_enabled", [True, False])
def test_staging_copies_outside_autograd_and_leaves_grad_mode_as_it_was(
    grad_enabled: bool,
) -> None:
    weight = torch.nn.Parameter(torch.randn(4, 3))
    buffer = HostBuffer()
    with torch.set_grad_enabled(grad_enabled):
        for _ in range(2):  # the second save reuses the placement
            staged = stage_state({"w": weight, "b": weight * 2}, buffer)
            assert torch.is_grad_enabled() is grad_enabled
    # No copy was recorded in a graph: the buffer's views hold bytes, not autograd history.
    layout = buffer.staging_layout
    assert layout is not None
    assert not any(target.requires_grad for target in layout.copies.targets)
    spec = staged.arrays[0]  # the first leaf: "w"
    held = buffer.tensor[spec.offset : spec.offset + spec.nbytes].view(torch.float32)
    assert torch.equal(held.view(4, 3), weight.detach())
