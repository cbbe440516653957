"""Naming what a pickle holds without running it (``ckpt inspect``'s pickled leaves)."""

from __future__ import annotations

import collections
import datetime
import fractions
import pickle
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
import torch

from alphatriangle._pickled_types import pickled_types


class _Touch:
    """Unpickling it would create a file: the stand-in for any hostile payload."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (Path.touch, (self.marker,))


class _Plain:
    def __init__(self) -> None:
        self.value = 1


def test_each_object_is_named_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    objects = [
        collections.OrderedDict(a=1),
        datetime.datetime(2026, 1, 1),
        fractions.Fraction(1, 3),
        Path("/data"),
        {1, 2},
        b"raw",
        np.float32(1.5),
        torch.float16,
        torch.device("cpu"),
        _Plain(),
        lambda x: x,
        _Touch(marker),
    ]
    names = pickled_types(cloudpickle.dumps(objects, protocol=pickle.HIGHEST_PROTOCOL))
    assert names == [
        "collections.OrderedDict",
        "datetime.datetime",
        "fractions.Fraction",
        f"pathlib.{type(Path('/data')).__name__}",
        "set",
        "bytes",
        "numpy scalar",
        "torch.float16",
        "torch.device",
        "test_pickled_types._Plain",
        "function",
        "built by pathlib.Path.touch()",
    ]
    assert not marker.exists(), "reading the pickle ran code from it"


def test_what_is_no_pickle_of_a_list_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="cannot read the pickle"):
        pickled_types(b"\x80\x05garbage")
    with pytest.raises(ValueError, match="holds a dict"):
        pickled_types(pickle.dumps({"a": 1}))
