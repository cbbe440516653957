"""The run's configuration as JSON: written atomically, or refused naming the key."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from dm_support import make_persist, make_train

from alphatriangle.config import ModelConfig
from alphatriangle.data import DataManager


def test_run_config_is_written_atomically(tmp_path: Path) -> None:
    with DataManager(make_persist(tmp_path), make_train()) as dm:
        path = dm.save_run_config({"seed": 7, "model": ModelConfig().model_dump()})
    assert path.name == "configs.json" and '"seed": 7' in path.read_text()
    assert not list(path.parent.glob(".*.tmp"))


def test_save_run_config_writes_json_or_refuses(tmp_path: Path) -> None:

    with DataManager(make_persist(tmp_path), make_train()) as dm:
        path = dm.save_run_config(
            {"model": ModelConfig(), "root": tmp_path / "data", "seed": 7, "tags": ("a", "b")}
        )
        written = json.loads(path.read_text())
        assert written["model"] == ModelConfig().model_dump(mode="json")
        assert written["root"] == str(tmp_path / "data") and written["tags"] == ["a", "b"]
        before = path.read_bytes()
        for bad, key in (
            ({"model": {"weights": torch.ones(2)}}, "model.weights"),
            ({"buffer": [1, np.zeros(3)]}, "buffer[1]"),
            ({"hook": object()}, "hook"),
        ):
            with pytest.raises(TypeError, match=key.replace("[", r"\[").replace("]", r"\]")):
                dm.save_run_config(bad)
        with pytest.raises(ValueError, match="loss"):
            dm.save_run_config({"loss": float("nan")})
        assert path.read_bytes() == before  # nothing written by a refused call
