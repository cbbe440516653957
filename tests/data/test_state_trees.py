"""A training state as the engine's trees and back: the fields each item carries, the tags
that reading checks, and a round trip through a real manager."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from dm_support import Parts, make_train
from helpers import assert_tree_equal

from alphatriangle.data import CheckpointCorruptError, CheckpointManager
from alphatriangle.data.state_trees import (
    BUFFER_ITEM,
    CHECKPOINT_ITEM,
    buffer_from_tree,
    buffer_tree,
    checkpoint_from_tree,
    checkpoint_tree,
)


def _checkpoint(parts: Parts) -> dict[str, object]:
    return checkpoint_tree(
        parts.nn,
        parts.optimizer,
        None,
        stats={},
        counters=(7, 3, 40),
        run_name="run",
        user_data={"note": "x"},
    )


def test_the_trees_round_trip_through_the_engine(ckpt_dir: Path) -> None:
    parts = Parts(make_train())
    parts.fill(12, seed=1)
    with CheckpointManager(ckpt_dir) as manager:
        manager.save(
            7, items={CHECKPOINT_ITEM: _checkpoint(parts), BUFFER_ITEM: buffer_tree(parts.buffer)}
        )
        manager.wait_until_finished()
        checkpoint = checkpoint_from_tree(manager.restore(7, item=CHECKPOINT_ITEM), ckpt_dir)
        buffer = buffer_from_tree(manager.restore(7, item=BUFFER_ITEM), ckpt_dir)
    assert checkpoint.run_name == "run" and checkpoint.global_step == 7
    assert (checkpoint.episodes_played, checkpoint.total_simulations_run) == (3, 40)
    assert checkpoint.user_data == {"note": "x"}
    assert checkpoint.model_config_dict == {} and checkpoint.scheduler_state_dict is None
    assert_tree_equal(checkpoint.model_state_dict, dict(parts.nn.state_dict()))
    assert checkpoint.rng_state is not None
    assert set(checkpoint.rng_state) == {"python", "numpy", "torch", "torch_cuda"}
    assert buffer.buffer_state is not None
    assert_tree_equal(buffer.buffer_state["columns"], parts.buffer.state_dict()["columns"])


def test_a_tree_of_another_format_or_version_is_refused_naming_where(tmp_path: Path) -> None:
    parts = Parts(make_train())
    tree = _checkpoint(parts)
    where = tmp_path / "step_000000007"
    for wrong in ({**tree, "version": 2}, {**tree, "format": "other"}, {"fields": {}}):
        with pytest.raises(
            CheckpointCorruptError, match="holds no alphatriangle checkpoint"
        ) as caught:
            checkpoint_from_tree(wrong, where)
        assert caught.value.path == str(where)
    with pytest.raises(CheckpointCorruptError, match="holds no alphatriangle buffer"):
        buffer_from_tree(tree, where)  # a checkpoint is no buffer
    with pytest.raises(CheckpointCorruptError, match="holds no alphatriangle checkpoint"):
        checkpoint_from_tree(buffer_tree(parts.buffer), where)


def test_the_tree_captures_the_random_generators_as_they_stand() -> None:
    parts = Parts(make_train())
    random.seed(5)
    torch.manual_seed(5)
    tree = _checkpoint(parts)
    fields = tree["fields"]
    assert isinstance(fields, dict)
    expected = random.random(), torch.rand(1)
    random.setstate(fields["rng_state"]["python"])
    torch.set_rng_state(fields["rng_state"]["torch"])
    assert (random.random(), torch.rand(1)) == expected
