"""Round trips of state trees through save and restore: every leaf kind comes back exactly."""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import assert_tree_equal
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from alphatriangle.data import CheckpointManager, CheckpointManagerOptions, KeepAll


def _roundtrip(directory: Path, state: Any, step: int = 0, *, trusted: bool = False) -> Any:
    with CheckpointManager(directory, CheckpointManagerOptions(retention=KeepAll())) as manager:
        manager.save(step, state, force=True)
        manager.wait_until_finished()
        return manager.restore(step, weights_only=False if trusted else None)


TORCH_DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int8,
    torch.uint8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.bool,
    torch.complex64,
]


@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=str)
def test_torch_dtypes(ckpt_dir: Path, dtype: torch.dtype) -> None:
    source = (torch.randn(7, 5) * 10).to(dtype)
    state = {"t": source, "scalar": source[0, 0].clone(), "empty": torch.empty(0, 3, dtype=dtype)}
    assert_tree_equal(_roundtrip(ckpt_dir, state), state)


def test_views_and_non_contiguous_tensors(ckpt_dir: Path) -> None:
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    state = {
        "transposed": base.t(),
        "strided": base[::2, 1::3],
        "expanded": torch.tensor([1.0, 2.0]).expand(4, 2),
        "narrow": base.narrow(1, 3, 4),
        "zero_d": torch.tensor(3.5),
        "conj": torch.tensor([1 + 2j, 3 - 1j]).conj(),
    }
    restored = _roundtrip(ckpt_dir, state)
    for key, value in state.items():
        assert torch.equal(restored[key], value.resolve_conj()), key
    # The three views of `base` share one storage, with their strides, as they did when saved
    # (torch.save does the same); a tensor alone in its storage comes back contiguous.
    views = ("transposed", "strided", "narrow")
    assert len({restored[k].untyped_storage().data_ptr() for k in views}) == 1
    assert all(restored[k].stride() == state[k].stride() for k in views)
    assert restored["expanded"].is_contiguous()
    assert restored["conj"].is_conj() is False  # resolved: the conjugate bit is no storage


def test_parameters_and_requires_grad(ckpt_dir: Path) -> None:
    layer = torch.nn.Linear(3, 2)
    state = {"param": layer.weight, "grad_tensor": torch.ones(2, requires_grad=True)}
    restored = _roundtrip(ckpt_dir, state)
    assert isinstance(restored["param"], torch.nn.Parameter)
    assert restored["param"].requires_grad
    assert torch.equal(restored["param"], layer.weight)
    assert restored["grad_tensor"].requires_grad


def test_numpy_dtypes_and_python_values(ckpt_dir: Path) -> None:
    state = {
        "f32": np.linspace(0, 1, 11, dtype=np.float32),
        "big_endian": np.arange(5, dtype=">i4"),
        "bool": np.array([True, False]),
        "unicode": np.array(["ab", "cde"]),
        "datetime": np.array(["2025-04-10"], dtype="datetime64[D]"),
        "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        "zero_d": np.array(7, dtype=np.int16),
        "object_array": np.array([1, "a", None], dtype=object),
        "np_scalar": np.float32(2.5),
        "floats": [math.nan, math.inf, -math.inf, -0.0, 1e300],
        "ints": [0, -1, 2**70, True, False, None],
        "text": "ünïcode \ud800",
        "bytes": b"\x00\x01",
        "tuple": (1, (2, [3])),
        "int_keys": {0: "a", 1: {"nested": torch.zeros(2)}},
        "tuple_keys": {(1, 2): "x"},
        "ordered": OrderedDict([("b", 1), ("a", 2)]),
        "fraction": Fraction(1, 3),
        "dtype": torch.float16,
        "size": torch.Size([2, 3]),
        "rng": random.Random(5).getstate(),
        "np_rng": np.random.default_rng(3).bit_generator.state,
    }
    assert_tree_equal(_roundtrip(ckpt_dir, state), state)


def test_tensors_inside_pickled_objects_travel_out_of_band(ckpt_dir: Path) -> None:
    class Holder:
        def __init__(self) -> None:
            self.weights = torch.arange(1000, dtype=torch.float32)
            self.table = np.ones((10, 10))

    restored = _roundtrip(ckpt_dir, {"holder": Holder()}, trusted=True)  # a local class
    assert torch.equal(restored["holder"].weights, torch.arange(1000, dtype=torch.float32))
    index = (ckpt_dir / "step_000000000" / "state.index.json").read_text()
    assert index.count('"framework"') == 2  # both arrays in the data file, not in the pickle
    pickled = (ckpt_dir / "step_000000000" / "state.objects.pkl").stat().st_size
    assert pickled < 2000


def test_weights_load_without_unpickling(ckpt_dir: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    state = {"model": model.state_dict(), "optimizer": {"lr": 0.1, "betas": (0.9, 0.99)}}
    _roundtrip(ckpt_dir, state)
    files = sorted(p.name for p in (ckpt_dir / "step_000000000").iterdir())
    assert files == ["manifest.json", "state.data", "state.index.json"]


def test_unpicklable_leaf_raises_at_save_and_leaves_nothing(ckpt_dir: Path) -> None:
    import threading

    with CheckpointManager(ckpt_dir) as manager:
        with pytest.raises(TypeError):
            manager.save(0, {"lock": threading.Lock()})
        assert manager.all_steps() == []
        manager.save(1, {"ok": 1})
    assert [p.name for p in ckpt_dir.iterdir() if p.name.startswith(("step", ".step"))] == [
        "step_000000001"
    ]


_leaf_arrays = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64, np.int64, np.uint8, np.bool_, np.complex128]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
)
_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    _leaf_arrays,
    _leaf_arrays.map(lambda a: torch.from_numpy(a.copy())),
)
_trees = st.recursive(
    _leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(st.one_of(st.text(max_size=5), st.integers()), children, max_size=4),
    ),
    max_leaves=20,
)


@given(state=_trees)
def test_arbitrary_trees_round_trip(tmp_path_factory: pytest.TempPathFactory, state: Any) -> None:
    directory = tmp_path_factory.mktemp("prop")
    assert_tree_equal(_roundtrip(directory, state), state)


def test_restored_tensors_have_storages_of_their_own(ckpt_dir: Path) -> None:
    state = {"a": torch.randn(1000), "b": torch.randn(10, 10).to(torch.bfloat16)}
    restored = _roundtrip(ckpt_dir, state)
    for key, tensor in restored.items():
        # torch.save of one restored tensor must not drag the whole data file along.
        assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size(), key
    restored["a"].add_(1.0)  # writable, and independent of "b"
    assert torch.equal(restored["b"], state["b"])
