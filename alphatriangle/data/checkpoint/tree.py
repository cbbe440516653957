"""The state-tree codec: a state tree to its JSON form, arrays and pickled objects, and back.

A state tree is nested dicts, OrderedDicts, lists and tuples whose leaves are tensors,
arrays, scalars, strings or any other object cloudpickle can serialise. Encoding splits it:

- the *tree*: containers and plain scalars as JSON; a node is a JSON scalar or a one-key
  object: ``{"a": i}`` array i, ``{"l": [...]}`` list, ``{"t": [...]}`` tuple,
  ``{"d": [[k, v], ...]}`` dict, ``{"od": [...]}`` OrderedDict, ``{"f": "nan"}`` a
  non-finite float, ``{"o": i}`` the i-th pickled object, ``{"da": [i, [k, ...]]}`` (and
  ``"oda"``) a dict whose values are the arrays i, i + 1, ... (format version 2);
- the *arrays*: every leaf that ``arrays.is_array_leaf`` accepts, in order;
- the *objects*: every other leaf, cloudpickled together; tensors and arrays inside them still
  travel as arrays (persistent ids).

The tag grammar is walked in one place, :func:`entries`: the partial restore finds subtrees
with :func:`child` and the arrays under them with :func:`references`, and a refusal of
pickled objects names where they sit with :func:`object_paths`.

Decoding is strict: any node, tag, index or nesting that encoding cannot produce raises
:class:`TreeError` (a ``ValueError``), never a wrong value. Trees deeper than
:data:`MAX_TREE_DEPTH` are refused on both sides, so whatever saves also restores.
"""

from __future__ import annotations

import io
import math
import pickle
import sys
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cloudpickle
import numpy as np
import torch

from alphatriangle.data.checkpoint._fields import NON_FINITE
from alphatriangle.data.checkpoint._safe_unpickling import check_global
from alphatriangle.data.checkpoint.arrays import is_array_leaf

__all__ = [
    "MAX_TREE_DEPTH",
    "PickledObject",
    "PickledPlaceholders",
    "TreeEncoder",
    "TreeError",
    "child",
    "decode_tree",
    "entries",
    "object_paths",
    "references",
    "unpickle_objects",
]

MAX_TREE_DEPTH = 200
JsonTree = Any  # None | bool | int | float | str | list | dict: what json.dumps accepts
_TAGS = frozenset({"a", "o", "f", "l", "t", "d", "od", "da", "oda"})
_RAW_TYPES = frozenset({torch.Tensor, torch.nn.Parameter, np.ndarray})
_KEY_TYPES = frozenset({str, int})  # exactly: a bool key is not compacted
_PLAIN_TYPES = frozenset({type(None), bool, int, str})  # encoded as themselves


class TreeError(ValueError):
    """A tree, or a pickled object of it, that encoding could not have produced."""


class TreeEncoder:
    """Walks a state tree once: JSON for containers and scalars, indices for the rest.

    With ``compact``, a dict of two or more entries whose keys are all str or int and whose
    values are all exact tensors or arrays becomes one node, ``{"da": [first, [keys...]]}``
    (``"oda"`` for an OrderedDict), its values the arrays ``first, first + 1, ...``: a model's
    state dict costs one node, not one per tensor. Whether each of those values can travel
    raw is checked by the caller (``compacted`` says whether any node was made)."""

    def __init__(self, *, compact: bool = False) -> None:
        self.leaves: list[torch.Tensor | np.ndarray[Any, Any]] = []
        self.objects: list[object] = []
        self.compact = compact
        self.compacted = False

    def encode(self, value: object, depth: int = 0) -> JsonTree:
        kind = type(value)
        if value is None or kind is bool or kind is int or kind is str:
            return value
        if kind is float:
            assert isinstance(value, float)
            return value if math.isfinite(value) else {"f": repr(value)}
        if depth >= MAX_TREE_DEPTH:
            raise ValueError(f"the state tree is nested deeper than {MAX_TREE_DEPTH} levels")
        inner = depth + 1
        if kind is dict or kind is OrderedDict:
            assert isinstance(value, dict)
            if self.compact and len(value) >= 2:
                values = list(value.values())
                # (set checks of the types, in C: a state dict has hundreds of entries)
                if _RAW_TYPES.issuperset(map(type, values)) and _KEY_TYPES.issuperset(
                    map(type, value)
                ):
                    first = len(self.leaves)
                    self.leaves.extend(values)
                    self.compacted = True
                    return {"da" if kind is dict else "oda": [first, list(value)]}
            tag = "d" if kind is dict else "od"
            encode = self.encode
            return {
                tag: [
                    [
                        k if type(k) in _PLAIN_TYPES else encode(k, inner),
                        v if type(v) in _PLAIN_TYPES else encode(v, inner),
                    ]
                    for k, v in value.items()
                ]
            }
        if kind is list or kind is tuple:
            assert isinstance(value, (list, tuple))
            tag = "l" if kind is list else "t"
            if _PLAIN_TYPES.issuperset(map(type, value)):  # e.g. a param group's indices
                return {tag: list(value)}
            encode = self.encode
            return {tag: [v if type(v) in _PLAIN_TYPES else encode(v, inner) for v in value]}
        if is_array_leaf(value):
            return {"a": self.add_leaf(value)}  # type: ignore[arg-type]
        self.objects.append(value)
        return {"o": len(self.objects) - 1}

    def add_leaf(self, leaf: torch.Tensor | np.ndarray[Any, Any]) -> int:
        self.leaves.append(leaf)
        return len(self.leaves) - 1

    def pickle_objects(self) -> bytes | None:
        if not self.objects:
            return None
        stream = io.BytesIO()
        pickler = _OutOfBandPickler(stream, self.add_leaf)
        pickler.dump(self.objects)
        return stream.getvalue()


class _OutOfBandPickler(cloudpickle.CloudPickler):  # type: ignore[misc]
    """cloudpickle that leaves tensors and arrays out of the pickle, as array references."""

    def __init__(self, stream: io.BytesIO, add_leaf: Callable[[Any], int]) -> None:
        super().__init__(stream, protocol=pickle.HIGHEST_PROTOCOL)
        self._add_leaf = add_leaf

    def persistent_id(self, obj: object) -> int | None:
        if is_array_leaf(obj):
            return self._add_leaf(obj)
        return None


def _index(body: object, count: int, what: str) -> int:
    if type(body) is not int or not 0 <= body < count:
        raise TreeError(f"{what} reference {body!r} is not an index below {count}")
    return body


def decode_tree(tree: JsonTree, arrays: list[Any], objects: list[Any] | None) -> Any:
    """Rebuild a state tree from its JSON form, the restored arrays and unpickled objects;
    raises :class:`TreeError` for anything encoding cannot produce."""
    return _decode(tree, arrays, objects, 0)


def _decode(node: JsonTree, arrays: list[Any], objects: list[Any] | None, depth: int) -> Any:
    kind = type(node)
    if node is None or kind is bool or kind is int or kind is str:
        return node
    if kind is float:
        if not math.isfinite(node):
            raise TreeError("a non-finite float outside an 'f' node")
        return node
    if kind is not dict or len(node) != 1:
        raise TreeError(f"a tree node must be a scalar or a one-key object, got {node!r:.80}")
    if depth >= MAX_TREE_DEPTH + 1:
        raise TreeError(f"the tree is nested deeper than {MAX_TREE_DEPTH} levels")
    ((tag, body),) = node.items()
    if tag not in _TAGS:
        raise TreeError(f"unknown tree node tag {tag!r:.40}")
    inner = depth + 1
    if tag == "a":
        return arrays[_index(body, len(arrays), "array")]
    if tag == "o":
        if objects is None:
            raise TreeError("the tree refers to a pickled object but the item has none")
        return objects[_index(body, len(objects), "object")]
    if tag == "f":
        if body not in NON_FINITE:
            raise TreeError(f"'f' node holds {body!r}, not one of {NON_FINITE}")
        return float(body)
    if type(body) is not list:
        raise TreeError(f"{tag!r} node holds {type(body).__name__}, not a list")
    if tag in ("da", "oda"):
        return _decode_compact(tag, body, arrays)
    if tag == "l":
        return [_decode(v, arrays, objects, inner) for v in body]
    if tag == "t":
        return tuple(_decode(v, arrays, objects, inner) for v in body)
    if tag in ("d", "od"):
        pairs = []
        for pair in body:
            if type(pair) is not list or len(pair) != 2:
                raise TreeError(f"a dict entry must be a [key, value] pair, got {pair!r:.80}")
            key = _decode(pair[0], arrays, objects, inner)
            pairs.append((key, _decode(pair[1], arrays, objects, inner)))
        try:
            return dict(pairs) if tag == "d" else OrderedDict(pairs)
        except TypeError as exc:  # an unhashable key
            raise TreeError(f"bad dict key ({exc})") from None
    raise AssertionError(tag)  # every tag in _TAGS is handled above


def _decode_compact(tag: str, body: list[Any], arrays: list[Any]) -> dict[Any, Any]:
    if len(body) != 2 or type(body[1]) is not list:
        raise TreeError(f"{tag!r} node must hold [first, [keys...]]")
    first, keys = body
    if not all(type(k) is str or type(k) is int for k in keys) or len(set(keys)) != len(keys):
        raise TreeError(f"{tag!r} node keys must be distinct str or int")
    start = _index(first, len(arrays) + 1, "array")
    if start + len(keys) > len(arrays):
        raise TreeError(f"{tag!r} node refers past the last array")
    pairs = zip(keys, arrays[start : start + len(keys)], strict=True)
    return dict(pairs) if tag == "da" else OrderedDict(pairs)


class _OutOfBandUnpickler(pickle.Unpickler):
    def __init__(self, stream: io.BytesIO, arrays: list[Any], *, restricted: bool) -> None:
        super().__init__(stream)
        self._arrays = arrays
        self._restricted = restricted

    def persistent_load(self, pid: object) -> Any:
        return self._arrays[_index(pid, len(self._arrays), "array")]

    def find_class(self, module: str, name: str) -> Any:
        if self._restricted:
            check_global(module, name)  # RefusedGlobal: outside the allow-list
        return super().find_class(module, name)


def unpickle_objects(data: bytes, arrays: list[Any], *, restricted: bool = True) -> list[Any]:
    """The objects pickled by :meth:`TreeEncoder.pickle_objects`, with their tensors and
    arrays put back. ``restricted``: only the globals ``_safe_unpickling`` admits are built
    (:class:`~alphatriangle.data.checkpoint._safe_unpickling.RefusedGlobal` otherwise); else
    the pickle runs as it is, for trusted steps only."""
    result = _OutOfBandUnpickler(io.BytesIO(data), arrays, restricted=restricted).load()
    if type(result) is not list:
        raise TreeError(f"the pickled objects are a {type(result).__name__}, not a list")
    return result


# -- walking the JSON form without decoding it --------------------------------------------------


@dataclass(frozen=True)
class PickledObject:
    """Stands for a pickled leaf where a tree is decoded without unpickling anything."""

    index: int


class PickledPlaceholders(list[Any]):
    """The objects of :func:`decode_tree` when nothing is to be unpickled: each pickled leaf
    decodes to its :class:`PickledObject`."""

    def __len__(self) -> int:
        return sys.maxsize

    def __getitem__(self, index: Any) -> PickledObject:  # type: ignore[override]
        return PickledObject(int(index))


def _tag(node: JsonTree) -> tuple[str | None, Any]:
    if isinstance(node, dict) and len(node) == 1:
        ((tag, body),) = node.items()
        return tag, body
    return None, None


def entries(node: JsonTree) -> list[tuple[JsonTree, JsonTree]]:
    """The (key node, value node) pairs of a container node: a list's or tuple's positions
    (plain ints), a dict's key nodes, a compact dict's keys with ``{"a": i}`` values; none
    for a leaf. Malformed parts are skipped (decoding reports them)."""
    tag, body = _tag(node)
    if type(body) is not list:
        return []
    if tag in ("l", "t"):
        return list(enumerate(body))
    if tag in ("d", "od"):
        return [(p[0], p[1]) for p in body if type(p) is list and len(p) == 2]
    if tag in ("da", "oda") and len(body) == 2:
        first, keys = body
        if type(first) is int and type(keys) is list:
            return [(key, {"a": first + i}) for i, key in enumerate(keys)]
    return []


def child(node: JsonTree, key: Any) -> JsonTree:
    """The node under ``key`` of a container node (a negative int counts from a sequence's
    end); KeyError when there is none."""
    tag, _ = _tag(node)
    pairs = entries(node)
    if tag in ("l", "t"):
        if type(key) is not int or not -len(pairs) <= key < len(pairs):
            raise KeyError(key)
        return pairs[key][1]
    for key_node, value in pairs:
        if decode_tree(key_node, [], None) == key:  # keys are scalars or tuples of them
            return value
    raise KeyError(key)


def references(node: JsonTree, arrays: set[int]) -> bool:
    """Add the arrays ``node`` refers to; whether it holds pickled objects."""
    tag, body = _tag(node)
    if tag == "a" and type(body) is int:
        arrays.add(body)
        return False
    if tag == "o":
        return True
    objects = False
    for key_node, value in entries(node):
        objects |= references(key_node, arrays) | references(value, arrays)
    return objects


def object_paths(node: JsonTree, where: str, found: list[str], limit: int = 10) -> None:
    """Where in the tree pickled objects sit, e.g. ``state['config']`` (at most ``limit``)."""
    if len(found) >= limit:
        return
    tag, _ = _tag(node)
    if tag == "o":
        found.append(where)
        return
    for key_node, value in entries(node):
        object_paths(value, f"{where}[{key_node!r}]", found, limit)
