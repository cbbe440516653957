"""How one tensor or array lies in a step's data file, and which array types travel raw.

Every dense torch dtype travels out of band as raw bytes (float8 and MX formats, the
``bits*`` types and the sub-byte shells included); quantized tensors, which need their scale,
go through the pickle. Only exact ``torch.Tensor`` / ``torch.nn.Parameter`` and exact
``numpy.ndarray`` travel raw; subclasses (masked arrays, ``np.matrix``,
tensor subclasses) and other dtypes go through the pickle, so that they come back as what
they were. The reader accepts only these dtypes: a dtype name read from disk is looked up in
this table, never resolved as an attribute of ``torch``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

__all__ = [
    "BYTE_COPIED",
    "GRAD_DTYPES",
    "TORCH_DTYPES",
    "ArraySpec",
    "is_array_leaf",
    "numpy_dtype",
]

# Sub-byte shells (one byte per element in memory): torch has no copy kernel for them.
_SUB_BYTE_NAMES = tuple(f"{sign}int{bits}" for sign in ("", "u") for bits in range(1, 8))
_TORCH_DTYPE_NAMES = (
    "bool",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "int8",
    "int16",
    "int32",
    "int64",
    "float16",
    "bfloat16",
    "float32",
    "float64",
    "complex32",
    "complex64",
    "complex128",
    "float8_e4m3fn",
    "float8_e5m2",
    "float8_e4m3fnuz",
    "float8_e5m2fnuz",
    "float8_e8m0fnu",
    "float4_e2m1fn_x2",
    "bits8",
    "bits16",
    "bits1x8",
    "bits2x4",
    "bits4x2",
    *_SUB_BYTE_NAMES,
)
#: name on disk -> torch dtype, for the dtypes this build of torch has.
TORCH_DTYPES: dict[str, torch.dtype] = {
    name: dtype
    for name in _TORCH_DTYPE_NAMES
    if isinstance(dtype := getattr(torch, name, None), torch.dtype)
}
_TORCH_DTYPE_TO_NAME = {dtype: name for name, dtype in TORCH_DTYPES.items()}
#: dtypes without a copy kernel: staged through a uint8 view of the same bytes.
BYTE_COPIED = frozenset(TORCH_DTYPES[name] for name in _SUB_BYTE_NAMES if name in TORCH_DTYPES)
#: the names of the dtypes a tensor of which may require grad (floating point and complex).
GRAD_DTYPES = frozenset(
    name for name, dtype in TORCH_DTYPES.items() if dtype.is_floating_point or dtype.is_complex
)
_RAW_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


@dataclass(frozen=True)
class ArraySpec:
    """Where one tensor or array lies in the data file, and how to rebuild it.

    Three kinds: a plain array (its bytes at ``offset``); a ``storage`` (the bytes of a torch
    storage that several tensors share, as uint8); a view (``view_of`` names the storage
    entry; ``stride`` and ``storage_offset``, in elements, place it there; it has no bytes of
    its own)."""

    framework: Literal["torch", "numpy"]
    dtype: str  # torch: a key of TORCH_DTYPES; numpy: dtype.str, e.g. "<f4"
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    device: str = "cpu"
    requires_grad: bool = False
    parameter: bool = False
    storage: bool = False
    view_of: int | None = None
    stride: tuple[int, ...] | None = None
    storage_offset: int = 0

    def to_json(self) -> dict[str, Any]:
        if self.view_of is not None:
            assert self.stride is not None
            return {
                "framework": "torch",
                "dtype": self.dtype,
                "shape": list(self.shape),
                "view_of": self.view_of,
                "stride": list(self.stride),
                "storage_offset": self.storage_offset,
                "device": self.device,
                "requires_grad": self.requires_grad,
                "parameter": self.parameter,
            }
        out: dict[str, Any] = {
            "framework": self.framework,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "offset": self.offset,
            "nbytes": self.nbytes,
        }
        if self.framework == "torch":
            out.update(
                device=self.device, requires_grad=self.requires_grad, parameter=self.parameter
            )
        if self.storage:
            out["storage"] = True
        return out

    @classmethod
    def of(cls, leaf: torch.Tensor | np.ndarray[Any, Any], offset: int) -> ArraySpec:
        """The spec of ``leaf`` (an :func:`is_array_leaf`) placed at ``offset``."""
        if isinstance(leaf, torch.Tensor):
            return cls(
                framework="torch",
                dtype=_TORCH_DTYPE_TO_NAME[leaf.dtype],
                shape=tuple(leaf.shape),
                offset=offset,
                nbytes=leaf.numel() * leaf.element_size(),
                device=str(leaf.device),
                requires_grad=leaf.requires_grad,
                parameter=type(leaf) is torch.nn.Parameter,
            )
        return cls(
            framework="numpy",
            dtype=leaf.dtype.str,
            shape=tuple(leaf.shape),
            offset=offset,
            nbytes=leaf.nbytes,
        )


def numpy_dtype(name: str) -> np.dtype[Any] | None:
    """The numpy dtype ``name`` stands for if it is one that travels raw (no objects, no
    fields, no sub-array, written in its canonical form), else None."""
    try:
        dtype = np.dtype(name)
    except (TypeError, ValueError, SyntaxError):
        return None
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        return None
    return dtype if dtype.str == name else None


def is_array_leaf(value: object) -> bool:
    """Whether ``value`` travels out of band as raw bytes: an exact tensor or parameter,
    dense and strided, of a listed dtype; or an exact numpy array of a plain dtype."""
    kind = type(value)
    if kind in _RAW_TENSOR_TYPES:
        assert isinstance(value, torch.Tensor)
        return (
            value.layout == torch.strided
            and value.dtype in _TORCH_DTYPE_TO_NAME
            and value.device.type != "meta"
            and not value.is_nested
        )
    if kind is np.ndarray:
        assert isinstance(value, np.ndarray)
        return not value.dtype.hasobject and value.dtype.fields is None
    return False
