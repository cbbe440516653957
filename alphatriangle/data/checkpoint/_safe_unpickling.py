"""Which globals the default restore lets a pickle name: the allow-list, and its registration.

A pickle runs code through the globals it names (a class to build, a function to call). The
default restore unpickles an item's objects file with an unpickler whose ``find_class``
admits only:

- builtin containers and scalars (``set``, ``frozenset``, ``complex``, ``bytearray``,
  ``range``, ``slice``, and the builtin types as ``defaultdict`` factories);
- ``collections``: ``OrderedDict``, ``deque``, ``defaultdict``, ``Counter``;
- ``datetime``, ``fractions.Fraction``, ``decimal.Decimal``, ``pathlib`` paths;
- numpy scalars, dtypes and object arrays (their elements are checked one by one);
- torch dtypes, ``torch.device`` and ``torch.Size``;
- what the caller registers with :func:`add_safe_globals` (its own classes, enums,
  namedtuples, dataclasses, pydantic models: whatever the pickle names).

Anything else raises :class:`~alphatriangle.data.checkpoint.errors.UnsafeObjectError` naming
the global and both ways to allow it. ``weights_only=False``, or a signing key that verifies
the step, unpickles anything (a trusted step); ``weights_only=True`` unpickles nothing.

Cost: one set lookup per global named in the objects file; arrays never pass through here.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

import torch

from alphatriangle.data.checkpoint.errors import UnsafeObjectError

__all__ = [
    "RefusedGlobal",
    "add_safe_globals",
    "check_global",
    "safe_globals",
    "unsafe_object_error",
]

_BUILTINS = ("set", "frozenset", "complex", "bytearray", "range", "slice")
_FACTORIES = ("list", "dict", "tuple", "int", "float", "str", "bytes", "bool")  # defaultdict
_DEFAULT: frozenset[tuple[str, str]] = frozenset(
    {("builtins", name) for name in _BUILTINS + _FACTORIES}
    | {("collections", n) for n in ("OrderedDict", "deque", "defaultdict", "Counter")}
    | {("datetime", n) for n in ("datetime", "date", "time", "timedelta", "timezone")}
    | {("fractions", "Fraction"), ("decimal", "Decimal")}
    | {
        ("pathlib", n)
        for n in (
            "Path",
            "PosixPath",
            "WindowsPath",
            "PurePath",
            "PurePosixPath",
            "PureWindowsPath",
        )
    }
    | {("numpy", "dtype"), ("numpy", "ndarray")}
    | {
        (f"{package}.{module}", name)
        for package in ("numpy.core", "numpy._core")
        for module, name in (
            ("multiarray", "scalar"),
            ("multiarray", "_reconstruct"),
            ("numeric", "_frombuffer"),
        )
    }
    | {("torch", "device"), ("torch", "Size")}
    | {("torch", name) for name, value in vars(torch).items() if isinstance(value, torch.dtype)}
)
_registered: set[tuple[str, str]] = set()
_registered_lock = threading.Lock()


class RefusedGlobal(Exception):  # noqa: N818 - an internal signal, turned into UnsafeObjectError
    """``find_class`` met a global outside the allow-list."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.module = module
        self.name = name


def _key(obj: object) -> tuple[str, str]:
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if not isinstance(module, str) or not isinstance(name, str) or "<locals>" in name:
        raise TypeError(
            f"add_safe_globals takes importable classes and functions (a module and a name), "
            f"got {obj!r:.80}"
        )
    return (module, name)


def add_safe_globals(objects: Iterable[object]) -> None:
    """Let the default restore unpickle these classes (and functions) in this process, as
    ``torch.serialization.add_safe_globals`` does for ``torch.load``: e.g.
    ``add_safe_globals([MyConfig, MyEnum])``. Registering is for good; register only what
    cannot run harmful code when built from data a checkpoint holds."""
    keys = [_key(obj) for obj in objects]
    with _registered_lock:
        _registered.update(keys)


def safe_globals() -> frozenset[tuple[str, str]]:
    """Every (module, name) the default restore admits: the built-in allow-list and what was
    registered."""
    with _registered_lock:
        return _DEFAULT | _registered


def check_global(module: str, name: str) -> None:
    """Raise :class:`RefusedGlobal` unless the default restore admits ``module.name``."""
    key = (module, name)
    if key in _DEFAULT:
        return
    with _registered_lock:
        if key in _registered:
            return
    raise RefusedGlobal(module, name)


def unsafe_object_error(refused: RefusedGlobal, path: Path, step: int) -> UnsafeObjectError:
    """The error a refused global becomes: what was refused, where, and both ways out."""
    qualified = f"{refused.module}.{refused.name}"
    return UnsafeObjectError(
        f"{path} pickles {qualified}, which the default restore does not unpickle (a "
        f"pickled global could run code). If you trust it, register it once per process: "
        f"alphatriangle.data.checkpoint.add_safe_globals([{refused.name.split('.')[-1]}]) "
        f"(from {refused.module}); or trust the whole step: restore(..., "
        "weights_only=False), or a manager whose signing_key verifies the step",
        path=path,
        step=step,
    )
