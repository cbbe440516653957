"""The replay buffer's state lays its rows out so that a save after a few adds and priority
updates differs from the previous one only in the rows that changed."""

from __future__ import annotations

from typing import Any

import numpy as np

from alphatriangle.config import TrainConfig
from alphatriangle.rl.core import ExperienceBuffer
from alphatriangle.utils.types import ColumnarBatch


def _batch(count: int, rng: np.random.Generator) -> ColumnarBatch:
    return ColumnarBatch(
        grid=rng.random((count, 1, 8, 15), dtype=np.float32),
        other_features=rng.random((count, 30), dtype=np.float32),
        policy_target=rng.random((count, 360), dtype=np.float32),
        value_target=rng.standard_normal(count),
    )


def _arrays(state: dict[str, Any]) -> dict[str, np.ndarray]:
    arrays = {name: np.array(column) for name, column in state["columns"].items()}
    arrays["priorities"] = np.array(state["priorities"])
    return arrays


def _changed_rows(before: np.ndarray, after: np.ndarray) -> set[int]:
    assert before.shape[1:] == after.shape[1:]
    common = min(len(before), len(after))
    rows = before[:common].reshape(common, -1) != after[:common].reshape(common, -1)
    return set(np.flatnonzero(rows.any(axis=1)).tolist()) | set(range(common, len(after)))


def _buffer(capacity: int) -> ExperienceBuffer:
    config = TrainConfig(BUFFER_CAPACITY=capacity, MIN_BUFFER_SIZE_TO_TRAIN=1, USE_PER=True)
    return ExperienceBuffer(config, seed=0)


def test_adds_to_a_full_buffer_change_only_the_rows_written() -> None:
    rng = np.random.default_rng(1)
    buffer = _buffer(3000)
    buffer.add_batch(_batch(3000, rng))
    buffer.add_batch(_batch(2800, rng))  # full, the cursor at 2800
    assert buffer.cursor == 2800
    before = _arrays(buffer.state_dict())
    buffer.add_batch(_batch(500, rng))  # wraps: slots 2800..2999, then 0..299
    sample = buffer.sample(64)
    assert sample is not None
    buffer.update_priorities(sample["indices"], rng.standard_normal(64))
    after = _arrays(buffer.state_dict())

    written = set(range(2800, 3000)) | set(range(300))
    for name in ("grid", "other_features", "policy_target", "value_target"):
        assert _changed_rows(before[name], after[name]) == written, name
    assert _changed_rows(before["priorities"], after["priorities"]) <= written | set(
        sample["indices"].tolist()
    )


def test_a_growing_buffer_keeps_its_earlier_state_as_a_prefix() -> None:
    rng = np.random.default_rng(2)
    buffer = _buffer(3000)
    buffer.add_batch(_batch(1000, rng))
    before = _arrays(buffer.state_dict())
    buffer.add_batch(_batch(700, rng))
    after = _arrays(buffer.state_dict())
    for name, array in before.items():
        assert len(after[name]) == 1700
        np.testing.assert_array_equal(after[name][:1000], array, err_msg=name)
