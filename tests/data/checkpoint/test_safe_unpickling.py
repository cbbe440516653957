"""Safe by default: restore unpickles through an allow-list; a pickle naming anything else
is refused before it runs, with the way to allow it; trusted steps load anything."""

from __future__ import annotations

import collections
import datetime as dt
import decimal
import enum
import fractions
import os
import pickle
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
from helpers import forge_step

from alphatriangle.data import (
    CheckpointManager,
    CheckpointManagerOptions,
    UnsafeObjectError,
    WeightsOnlyError,
    add_safe_globals,
)

KEY = b"k" * 32


class _FileCreator:
    """What an attacker plants: unpickling it creates a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def _planted(ckpt_dir: Path, marker: Path) -> Path:
    """A step whose objects file was replaced by a hostile pickle, every xxh3 recomputed."""
    with CheckpointManager(ckpt_dir) as manager:
        manager.save(1, {"w": torch.ones(3), "config": {"lr": 0.1, "tags": {"a"}}})
    step_dir = ckpt_dir / "step_000000001"
    hostile = pickle.dumps([_FileCreator(marker)], protocol=pickle.HIGHEST_PROTOCOL)
    forge_step(step_dir, files={"state.objects.pkl": hostile})
    return step_dir


def test_a_planted_pickle_is_refused_by_default(ckpt_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    step_dir = _planted(ckpt_dir, marker)
    with CheckpointManager(ckpt_dir, CheckpointManagerOptions(read_only=True)) as reader:
        for attempt in (reader.restore, lambda: reader.restore(fallback=True)):
            with pytest.raises(UnsafeObjectError) as info:
                attempt()
            assert not marker.exists(), "the pickle ran"
        message = str(info.value)
        assert info.value.path == str(step_dir / "state.objects.pkl") and info.value.step == 1
        assert "posix.mkdir" in message
        assert "add_safe_globals" in message and "weights_only=False" in message
        assert "signing_key" in message
        assert isinstance(info.value, pickle.UnpicklingError)  # as torch.load raises
        with pytest.raises(WeightsOnlyError):
            reader.restore(weights_only=True)
        reader.restore(weights_only=False)  # the explicit opt-in runs it
    assert marker.exists()


class Point(NamedTuple):
    x: int
    y: int


class Color(enum.Enum):
    RED = 1
    BLUE = 2


@dataclass(frozen=True)
class Settings:
    name: str
    colors: tuple[Color, ...]


def test_the_allow_list_round_trips_by_default(ckpt_dir: Path) -> None:
    objects = {
        "set": {1, 2},
        "frozenset": frozenset({"a"}),
        "complex": 1 + 2j,
        "bytes": b"\x00\x01",
        "bytearray": bytearray(b"xy"),
        "range": range(2, 9, 3),
        "slice": slice(1, None, 2),
        "deque": collections.deque([1, 2], maxlen=5),
        "defaultdict": collections.defaultdict(list, {"a": [1]}),
        "counter": collections.Counter("abca"),
        "when": dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.timezone.utc),
        "day": dt.date(2026, 1, 2),
        "span": dt.timedelta(seconds=5),
        "decimal": decimal.Decimal("1.25"),
        "fraction": fractions.Fraction(1, 3),
        "paths": (Path("/tmp/x"), PurePosixPath("a/b")),
        "numpy scalars": (np.float32(1.5), np.int64(7), np.bool_(True), np.str_("s")),
        "numpy dtype": np.dtype("<f4"),
        "object array": np.array([1, "a", None], dtype=object),
        "torch": (torch.bfloat16, torch.device("cpu"), torch.Size([2, 3])),
    }
    with CheckpointManager(ckpt_dir) as manager:
        manager.save(0, {"objects": objects})
        manager.wait_until_finished()
        restored = manager.restore(0)["objects"]
    for key, value in objects.items():
        if key == "object array":
            assert restored[key].tolist() == value.tolist()
        else:
            assert restored[key] == value and type(restored[key]) is type(value), key
    assert restored["deque"].maxlen == 5 and restored["defaultdict"].default_factory is list


def test_registered_classes_load_by_default_and_others_name_themselves(ckpt_dir: Path) -> None:
    state = {"settings": Settings("run", (Color.RED, Color.BLUE)), "point": Point(1, 2)}
    with CheckpointManager(ckpt_dir) as manager:
        manager.save(0, state)
        manager.wait_until_finished()
        with pytest.raises(UnsafeObjectError, match=r"test_safe_unpickling\.Settings"):
            manager.restore(0)
        add_safe_globals([Settings, Color, Point])
        assert manager.restore(0) == state
    with pytest.raises(TypeError, match="add_safe_globals"):
        add_safe_globals([lambda: None])


def test_a_verified_signed_step_is_trusted(ckpt_dir: Path, tmp_path: Path) -> None:
    class Local:  # defined here: pickled by value, never on any allow-list
        def __init__(self) -> None:
            self.value = 3

    options = CheckpointManagerOptions(signing_key=KEY)
    with CheckpointManager(ckpt_dir, options) as manager:
        manager.save(0, {"local": Local()})
        manager.wait_until_finished()
        assert manager.restore(0)["local"].value == 3
        assert manager.restore(0, select="local")["local"].value == 3
    unkeyed = CheckpointManager(ckpt_dir, CheckpointManagerOptions(read_only=True))
    with unkeyed, pytest.raises(UnsafeObjectError):
        unkeyed.restore(0)  # without the key, the same step is not trusted
