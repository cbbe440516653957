"""In-place restore: ``restore(step, target=tree)`` fills the tree's tensors and arrays where
they are, sets its other leaves, and names the first key that does not match."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import assert_tree_equal, forge_step, state_for_step

from alphatriangle.data import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointManager,
    CheckpointManagerOptions,
    KeepAll,
)


def _saved(ckpt_dir: Path, state: Any, options: CheckpointManagerOptions | None = None) -> None:
    with CheckpointManager(ckpt_dir, options or CheckpointManagerOptions(retention=KeepAll())) as m:
        m.save(0, state)


def _zeros_like(tree: Any) -> Any:
    if isinstance(tree, torch.nn.Parameter):
        return torch.nn.Parameter(torch.zeros_like(tree), requires_grad=tree.requires_grad)
    if isinstance(tree, torch.Tensor):  # its strides too: a transposed target stays one
        zeros = torch.empty_like(tree)
        zeros.view(torch.uint8).zero_() if zeros.element_size() == 1 else zeros.zero_()
        return zeros
    if isinstance(tree, np.ndarray):
        return np.zeros_like(tree)
    if isinstance(tree, dict):
        return type(tree)((k, _zeros_like(v)) for k, v in tree.items())
    if isinstance(tree, (list, tuple)):
        return type(tree)(_zeros_like(v) for v in tree)
    return None


def _state() -> dict[str, Any]:
    base = torch.arange(12.0)
    nibbles = torch.arange(24, dtype=torch.uint8).view(torch.uint4)
    state = state_for_step(3, 0.25)
    state.update(
        transposed=torch.arange(6.0).view(2, 3).t(),
        tied=(base, base[4:8]),  # a storage shared by two tensors
        half=torch.randn(5).to(torch.bfloat16),
        nibbles=(nibbles, nibbles[4:]),  # no copy kernel, and views of one storage
        grad=torch.nn.Parameter(torch.ones(3)),
        table=np.arange(20, dtype=np.int16).reshape(4, 5),
        pair=(1, "two"),
        config={"lr": 0.1, "tags": {"a", "b"}},
    )
    return state


@pytest.mark.parametrize("signed", [False, True], ids=["checksums", "signed"])
def test_fills_every_tensor_in_place_and_sets_the_rest(ckpt_dir: Path, signed: bool) -> None:
    options = CheckpointManagerOptions(signing_key=b"s" * 32 if signed else None)
    state = _state()
    _saved(ckpt_dir, state, options)
    target = _zeros_like(state)
    leaves = {
        name: (target[name], target[name].data_ptr() if name != "table" else None)
        for name in ("half", "grad", "transposed")
    }
    model = target["model"]
    pointers = [t.data_ptr() for t in model.values()]
    table = target["table"]
    with CheckpointManager(ckpt_dir, options) as manager:
        restored = manager.restore(0, target=target)
    assert restored is target
    assert_tree_equal(restored, state)
    assert restored["model"] is model and [t.data_ptr() for t in model.values()] == pointers
    for name, (tensor, pointer) in leaves.items():
        assert restored[name] is tensor and tensor.data_ptr() == pointer, name
    assert restored["table"] is table
    assert restored["grad"].requires_grad and type(restored["grad"]) is torch.nn.Parameter


def test_a_mismatch_names_the_key_and_writes_nothing(ckpt_dir: Path) -> None:
    state = {"model": OrderedDict(w=torch.ones(4), b=torch.ones(2)), "step": 3}
    _saved(ckpt_dir, state)
    cases: list[tuple[Any, str]] = [
        ({"model": OrderedDict(w=torch.zeros(5), b=torch.zeros(2)), "step": 0}, "['w']"),
        (
            {
                "model": OrderedDict(w=torch.zeros(4, dtype=torch.float64), b=torch.zeros(2)),
                "step": 0,
            },
            "float64",
        ),
        ({"model": OrderedDict(w=torch.zeros(4)), "step": 0}, "['b'] is missing"),
        (
            {"model": OrderedDict(w=torch.zeros(4), b=torch.zeros(2), c=1), "step": 0},
            "['c'] is not in the step",
        ),
        (
            {"model": OrderedDict(w=np.zeros(4, np.float32), b=torch.zeros(2)), "step": 0},
            "the step holds a tensor",
        ),
        ({"model": [torch.zeros(4), torch.zeros(2)], "step": 0}, "the step holds a dict"),
    ]
    with CheckpointManager(ckpt_dir, CheckpointManagerOptions(read_only=True)) as reader:
        for target, expected in cases:
            with pytest.raises(CheckpointError, match=expected.replace("[", r"\[")) as info:
                reader.restore(0, target=target)
            assert "state['model']" in str(info.value) and info.value.step == 0
            first = target["model"]["w"] if isinstance(target["model"], dict) else None
            if isinstance(first, torch.Tensor):
                assert not first.any(), "a refused target was written"
        with pytest.raises(ValueError, match="map_location"):
            reader.restore(0, target=_zeros_like(state), map_location="cpu")


def test_a_corrupt_array_is_refused(ckpt_dir: Path) -> None:
    state = {"w": torch.arange(1000.0), "v": torch.ones(10)}
    _saved(ckpt_dir, state)
    step_dir = ckpt_dir / "step_000000000"
    data = bytearray((step_dir / "state.data").read_bytes())
    data[100] ^= 0xFF
    manifest_only = {"state.data": bytes(data)}  # whole-file xxh3 recomputed, not the array's
    forge_step(step_dir, files=manifest_only)
    reader = CheckpointManager(ckpt_dir, CheckpointManagerOptions(read_only=True))
    with reader, pytest.raises(CheckpointCorruptError, match="array 0") as info:
        reader.restore(0, target=_zeros_like(state))
    assert info.value.path == str(step_dir / "state.data")


def test_a_model_state_dict_as_target_loads_the_model(ckpt_dir: Path) -> None:
    torch.manual_seed(0)
    trained = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    _saved(ckpt_dir, {"model": trained.state_dict(), "step": 7})
    fresh = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    weight = fresh[0].weight
    with CheckpointManager(ckpt_dir, CheckpointManagerOptions(read_only=True)) as reader:
        restored = reader.restore(0, target={"model": fresh.state_dict(), "step": None})
    assert restored["step"] == 7
    assert fresh[0].weight is weight  # the module's own parameters hold the bytes now
    for name, value in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name
