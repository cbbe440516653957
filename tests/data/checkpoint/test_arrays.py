"""Array specs and dtypes (``arrays.py``): what travels raw, and how one array is described
in the index."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alphatriangle.data.checkpoint.arrays import (
    BYTE_COPIED,
    GRAD_DTYPES,
    TORCH_DTYPES,
    ArraySpec,
    is_array_leaf,
    numpy_dtype,
)


def test_torch_dtype_names_are_the_attribute_names() -> None:
    for name, dtype in TORCH_DTYPES.items():
        assert getattr(torch, name) is dtype
    assert {"float32", "bfloat16", "bool", "complex64"} <= set(TORCH_DTYPES)
    assert "float32" in GRAD_DTYPES and "int64" not in GRAD_DTYPES
    assert all(dtype.itemsize == 1 for dtype in BYTE_COPIED)


def test_the_spec_of_a_tensor_and_of_an_array() -> None:
    weight = torch.nn.Parameter(torch.ones(2, 3))
    spec = ArraySpec.of(weight, 64)
    assert (spec.framework, spec.dtype, spec.shape, spec.offset, spec.nbytes) == (
        "torch",
        "float32",
        (2, 3),
        64,
        24,
    )
    assert spec.parameter and spec.requires_grad and spec.device == "cpu"
    assert spec.to_json() == {
        "framework": "torch",
        "dtype": "float32",
        "shape": [2, 3],
        "offset": 64,
        "nbytes": 24,
        "device": "cpu",
        "requires_grad": True,
        "parameter": True,
    }
    array = ArraySpec.of(np.zeros((4,), dtype=">i2"), 0)
    assert array.to_json() == {
        "framework": "numpy",
        "dtype": ">i2",
        "shape": [4],
        "offset": 0,
        "nbytes": 8,
    }


def test_a_view_spec_has_no_bytes_of_its_own() -> None:
    view = ArraySpec("torch", "int32", (2,), 0, 0, view_of=1, stride=(3,), storage_offset=2)
    assert view.to_json()["view_of"] == 1 and "offset" not in view.to_json()
    assert ArraySpec("torch", "uint8", (8,), 0, 8, storage=True).to_json()["storage"] is True


@pytest.mark.parametrize(
    ("name", "travels"),
    [("<f4", True), ("|b1", True), (">i8", True), ("|O", False), ("float32", False)],
)
def test_numpy_dtypes_travel_raw_only_in_their_canonical_form(name: str, travels: bool) -> None:
    assert (numpy_dtype(name) is not None) == travels
    assert numpy_dtype("[('a', '<i4')]") is None and numpy_dtype("no such") is None


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_which_leaves_travel_as_arrays() -> None:
    assert is_array_leaf(torch.ones(2)) and is_array_leaf(torch.nn.Parameter(torch.ones(1)))
    assert is_array_leaf(np.ones(3)) and is_array_leaf(torch.ones(4, 4).t())
    assert not is_array_leaf(np.array([object()], dtype=object))
    assert not is_array_leaf(np.zeros(2, dtype=[("a", "<i4")]))
    assert not is_array_leaf(torch.ones(2, device="meta"))
    assert not is_array_leaf(torch.ones(2).to_sparse())
    assert not is_array_leaf(np.matrix([[1]]))  # a subclass is pickled, keeping its type
    assert not is_array_leaf([1.0, 2.0])
