"""What ``restore`` takes from ``torch.load`` users: ``map_location`` in each of its forms,
and ``select`` given as one bare key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import forge_step

from alphatriangle.data import CheckpointManager, CheckpointManagerOptions

READ = CheckpointManagerOptions(read_only=True)


def _saved_on_cuda(ckpt_dir: Path) -> None:
    """A step whose tensor says it was saved on cuda:1, beside one saved on the CPU."""
    with CheckpointManager(ckpt_dir) as manager:
        manager.save(0, {"gpu": torch.arange(4.0), "cpu": torch.ones(2)})

    def on_cuda(index: dict[str, Any]) -> None:
        index["arrays"][0]["device"] = "cuda:1"

    forge_step(ckpt_dir / "step_000000000", index=on_cuda)


@pytest.mark.parametrize(
    "map_location",
    [
        "cpu",
        torch.device("cpu"),
        {"cuda:1": "cpu"},
        {torch.device("cuda:1"): torch.device("cpu")},
        lambda storage, location: storage,
    ],
    ids=["string", "device", "dict", "dict of devices", "callable"],
)
def test_map_location_forms_of_torch_load(ckpt_dir: Path, map_location: Any) -> None:
    _saved_on_cuda(ckpt_dir)
    with CheckpointManager(ckpt_dir, READ) as reader:
        state = reader.restore(map_location=map_location)
    assert state["gpu"].device.type == "cpu" and torch.equal(state["gpu"], torch.arange(4.0))
    assert torch.equal(state["cpu"], torch.ones(2))


def test_map_location_dict_and_callable_leave_the_rest_where_it_was(ckpt_dir: Path) -> None:
    with CheckpointManager(ckpt_dir) as manager:
        manager.save(0, {"a": torch.ones(3), "b": torch.zeros(2)})
    seen: list[str] = []

    def to_meta(storage: torch.UntypedStorage, location: str) -> Any:
        seen.append(location)
        return torch.empty(0, device="meta")  # what it returns says where: its device

    with CheckpointManager(ckpt_dir, READ) as reader:
        moved = reader.restore(map_location={"cpu": "meta"})
        assert moved["a"].device.type == "meta"
        kept = reader.restore(map_location={"cuda:0": "meta"})
        assert kept["a"].device.type == "cpu" and torch.equal(kept["a"], torch.ones(3))
        assert reader.restore(map_location=to_meta)["b"].device.type == "meta"
        assert seen == ["cpu"], "the callable is asked once per saved device"
        same = reader.restore(map_location=lambda storage, location: None)
        assert same["a"].device.type == "cpu"


@pytest.mark.parametrize(
    ("map_location", "error"),
    [
        (3, TypeError),
        (["cpu"], TypeError),
        ({"cpu": 0}, TypeError),
        ("gpu:zero", ValueError),
        (lambda storage, location: "cpu", TypeError),
    ],
    ids=["int", "list", "dict of int", "bad name", "callable returning a string"],
)
def test_unsupported_map_location_names_it(
    ckpt_dir: Path, map_location: Any, error: type[Exception]
) -> None:
    with CheckpointManager(ckpt_dir) as manager:
        manager.save(0, {"a": torch.ones(3)})
        manager.wait_until_finished()
        with pytest.raises(error, match="map_location"):
            manager.restore(map_location=map_location)


def test_select_as_one_bare_key(ckpt_dir: Path) -> None:
    state = {"model": {"w": torch.ones(2)}, "m": 1, "o": 2, "d": 3, "e": 4, "l": 5}
    with CheckpointManager(ckpt_dir) as manager:
        manager.save(0, state)
        manager.wait_until_finished()
        selected = manager.restore(select="model")
        assert list(selected) == ["model"] and torch.equal(selected["model"]["w"], torch.ones(2))
        assert manager.restore(select="m") == {"m": 1}
