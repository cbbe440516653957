"""What a pickle holds, named without running it: for ``alphatriangle ckpt inspect``.

:func:`pickled_types` reads a pickle of a list (a step's ``<item>.objects.pkl``) with an
unpickler whose every global is a stand-in class: no module is imported and no function or
constructor from the pickle is called, so a hostile checkpoint runs nothing. Each element is
named by what would rebuild it: its class (``collections.OrderedDict``, through
``copyreg``'s reconstructors too), a builtin container's type, or, for an object a function
builds, that function (``function os.system``). Cost: one pass over the pickle's opcodes.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

__all__ = ["pickled_types"]

# Globals that rebuild an object of the class given as their first argument.
_RECONSTRUCTORS = frozenset(
    {"copyreg._reconstructor", "copyreg.__newobj__", "copyreg.__newobj_ex__"}
)
# Classes whose names are not capitalised, and functions that build a known type.
_KNOWN = {
    **{f"datetime.{n}": f"datetime.{n}" for n in ("date", "datetime", "time", "timedelta")},
    **{f"builtins.{n}": n for n in ("complex", "set", "frozenset", "bytearray", "slice")},
    **{n: n for n in ("builtins.range", "collections.deque", "torch.device", "torch.dtype")},
    **{n: n for n in ("numpy.dtype", "datetime.timezone")},
    **{f"numpy.{c}.multiarray.scalar": "numpy scalar" for c in ("core", "_core")},
    **{f"numpy.{c}.multiarray._reconstruct": "numpy.ndarray" for c in ("core", "_core")},
}
_CLASS_MAKERS = frozenset({"_make_skeleton_class", "_make_skeleton_enum"})
_CLOUDPICKLE = {
    "_make_function": "function",
    "_make_skeleton_class": "class",
    "_make_skeleton_enum": "enum class",
    "_builtin_type": "type",
    "_make_cell": "cell",
    "_make_empty_cell": "cell",
    "subimport": "module",
    "dynamic_subimport": "module",
}


class _Opaque:
    """Stands for an object the pickle would build; accepts what building it would do.
    Each global of the pickle is a subclass (see :func:`_stand_in`), so that the pickle's
    calls (REDUCE) and constructions (NEWOBJ) build these, and nothing else."""

    pickled_name = "object"

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        name = cls.pickled_name
        if name == "builtins.getattr" and len(args) == 2 and isinstance(args[1], str):
            # a global reached through getattr: it may be a class, called or built later
            return _stand_in(f"{_name_of(args[0])}.{args[1]}")
        maker = name.rpartition(".")[2]
        if name.startswith("cloudpickle") and maker in _CLASS_MAKERS and len(args) > 1:
            return _stand_in(str(args[1]))  # a class defined at run time
        instance = super().__new__(cls)
        instance.kind = _class_name(name)  # NEWOBJ: an instance of the class
        return instance

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.kind: str = _describe(type(self).pickled_name, args)  # REDUCE: a call

    def __call__(self, *args: Any, **kwargs: Any) -> _Opaque:
        called = _stand_in("object")()
        called.kind = f"built by {self.kind}()"
        return called

    def _accept(self, *args: Any) -> None:
        """BUILD, APPEND(S), ADDITEMS and SETITEM(S) fill the object: a stand-in keeps
        nothing."""

    __setstate__ = append = extend = add = __setitem__ = _accept


def _stand_in(name: str) -> type[_Opaque]:
    return type("StandIn", (_Opaque,), {"pickled_name": name})


def _describe(name: str, args: tuple[Any, ...]) -> str:
    first = args[0] if args else None
    if name in _RECONSTRUCTORS and isinstance(first, type) and issubclass(first, _Opaque):
        return _class_name(first.pickled_name)
    if name in _KNOWN:
        return _KNOWN[name]
    module, _, qualname = name.rpartition(".")
    if module.startswith("cloudpickle") and qualname in _CLOUDPICKLE:
        return _CLOUDPICKLE[qualname]
    if qualname.rpartition(".")[2][:1].isupper():  # a class, by Python's naming convention
        return _class_name(name)
    return f"built by {name}()"


def _name_of(value: Any) -> str:
    if isinstance(value, type) and issubclass(value, _Opaque):
        return value.pickled_name
    return value.kind if isinstance(value, _Opaque) else type(value).__name__


def _class_name(name: str) -> str:
    return name.removeprefix("builtins.")


class _NamingUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return _stand_in(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        return _stand_in("array")()  # a tensor or array stored out of band


def pickled_types(data: bytes) -> list[str]:
    """The kind of each element of a pickled list, without running the pickle. ValueError
    when the data is no pickle of a list."""
    try:
        result = _NamingUnpickler(io.BytesIO(data)).load()
    except Exception as exc:  # any malformed pickle: a truncated stream, a bad opcode...
        raise ValueError(f"cannot read the pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(result, list):
        raise ValueError(f"the pickle holds a {type(result).__name__}, not a list")
    return [_name_of(item) for item in result]
