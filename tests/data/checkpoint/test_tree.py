"""The tree codec (``tree.py``): a state tree to its JSON form, arrays and pickled objects and
back, and the walkers over the JSON form (``entries``, ``child``, ``references``,
``object_paths``) that partial restores and refusals use without decoding."""

from __future__ import annotations

import json
from collections import OrderedDict
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import assert_tree_equal, committed_step, forge_step, restore_error
from hypothesis import given, settings
from hypothesis import strategies as st

from alphatriangle.data import CheckpointManager
from alphatriangle.data.checkpoint.tree import (
    MAX_TREE_DEPTH,
    PickledObject,
    PickledPlaceholders,
    TreeEncoder,
    TreeError,
    child,
    decode_tree,
    object_paths,
    references,
    unpickle_objects,
)

_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5)
_leaves = (
    _scalars
    | st.builds(lambda n: torch.arange(n, dtype=torch.float32), st.integers(0, 4))
    | st.builds(np.arange, st.integers(0, 4))
    | st.builds(Fraction, st.integers(), st.integers(1, 9))
)
_keys = st.text(max_size=4) | st.integers(-5, 5)
_trees = st.recursive(
    _leaves,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(_keys, inner, max_size=3)
        | st.dictionaries(_keys, inner, max_size=3).map(OrderedDict)
    ),
    max_leaves=12,
)


def _encode(tree: Any, *, compact: bool) -> tuple[Any, list[Any], list[Any] | None]:
    encoder = TreeEncoder(compact=compact)
    form = json.loads(json.dumps(encoder.encode(tree), allow_nan=False))  # JSON and back
    pickled = encoder.pickle_objects()
    objects = None if pickled is None else unpickle_objects(pickled, encoder.leaves)
    return form, encoder.leaves, objects


@settings(max_examples=60, deadline=None)
@given(tree=_trees, compact=st.booleans())
def test_a_tree_decodes_to_itself(tree: Any, compact: bool) -> None:
    form, arrays, objects = _encode(tree, compact=compact)
    assert_tree_equal(decode_tree(form, arrays, objects), tree)


@settings(max_examples=60, deadline=None)
@given(tree=st.dictionaries(_keys, _trees, min_size=1, max_size=4), compact=st.booleans())
def test_walkers_find_each_subtree_and_its_arrays(tree: dict[Any, Any], compact: bool) -> None:
    form, arrays, objects = _encode(tree, compact=compact)
    for key, value in tree.items():
        node = child(form, key)
        assert_tree_equal(decode_tree(node, arrays, objects), value)
        found: set[int] = set()
        holds_objects = references(node, found)
        leaves = _leaves_of(decode_tree(node, arrays, PickledPlaceholders()))
        assert holds_objects == any(isinstance(leaf, PickledObject) for leaf in leaves)
        if not holds_objects:  # arrays inside pickled objects are referenced by the pickle
            ids = {id(arrays[i]) for i in found}
            assert ids == {
                id(leaf) for leaf in leaves if isinstance(leaf, (torch.Tensor, np.ndarray))
            }
    with pytest.raises(KeyError):
        child(form, "no such key" * 3)


def _leaves_of(tree: Any) -> list[Any]:
    if isinstance(tree, dict):
        return [leaf for value in tree.values() for leaf in _leaves_of(value)]
    if isinstance(tree, (list, tuple)):
        return [leaf for value in tree for leaf in _leaves_of(value)]
    return [tree]


def test_child_of_a_sequence_takes_negative_ints_only_as_ints() -> None:
    form, _, _ = _encode({"l": [10, 20, 30]}, compact=False)
    listed = child(form, "l")
    assert child(listed, -1) == 30 and child(listed, 0) == 10
    for key in (3, -4, True, "0"):
        with pytest.raises(KeyError):
            child(listed, key)


def test_object_paths_name_where_pickled_leaves_sit() -> None:
    state = {"config": Fraction(1, 3), "nested": [1, {"deep": Fraction(2, 3)}], "w": torch.ones(1)}
    form, _, _ = _encode(state, compact=True)
    found: list[str] = []
    object_paths(form, "state", found)
    assert found == ["state['config']", "state['nested'][1]['deep']"]
    capped: list[str] = []
    object_paths({"l": [{"o": i} for i in range(20)]}, "x", capped)
    assert len(capped) == 10


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ({"a": 5}, "array reference"),
        ({"x": 1}, "unknown tree node tag"),
        ({"f": "1.5"}, "'f' node"),
        ({"da": [0, ["k", "k"]]}, "distinct"),
        ({"da": [0, ["a", "b", "c"]]}, "past the last array"),
        ({"o": 0}, "pickled object"),
        ([1], "one-key object"),
    ],
)
def test_decoding_refuses_what_encoding_cannot_produce(node: Any, message: str) -> None:
    with pytest.raises(TreeError, match=message):
        decode_tree(node, [torch.ones(1), torch.ones(1)], None)


def test_unpickled_objects_must_be_a_list() -> None:
    import pickle

    with pytest.raises(TreeError, match="not a list"):
        unpickle_objects(pickle.dumps({"a": 1}), [])


def test_deeply_nested_index_is_corruption_not_recursion(ckpt_dir: Path) -> None:
    step_dir = committed_step(ckpt_dir)
    deep = b'{"l":[' * 50_000 + b"1" + b"]}" * 50_000
    forge_step(step_dir, files={"state.index.json": b'{"arrays":[],"tree":' + deep + b"}"})
    assert "JSON" in str(restore_error(ckpt_dir)) or "nested" in str(restore_error(ckpt_dir))


def test_trees_deeper_than_the_limit_are_refused_at_save(ckpt_dir: Path) -> None:

    deep: Any = 1
    for _ in range(MAX_TREE_DEPTH):
        deep = [deep]
    with CheckpointManager(ckpt_dir) as manager:
        manager.save(0, deep)
        manager.wait_until_finished()
        assert_tree_equal(manager.restore(0), deep)
        with pytest.raises(ValueError, match="nested deeper"):
            manager.save(1, [deep])
