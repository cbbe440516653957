"""The columnar replay buffer against a plain reference, statistically, and through a
checkpoint."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import numpy as np
import pytest
from helpers import assert_tree_equal
from hypothesis import given

from alphatriangle.config import EnvConfig, ModelConfig, TrainConfig
from alphatriangle.data import CheckpointManager
from alphatriangle.rl.core import ExperienceBuffer
from alphatriangle.utils.types import ColumnarBatch, Experience, StateType

SMALL_ENV = EnvConfig(ROWS=2, COLS=3, NUM_SHAPE_SLOTS=1)  # 6 actions
SMALL_MODEL = ModelConfig(GRID_INPUT_CHANNELS=1, OTHER_NN_INPUT_FEATURES_DIM=2)


def _config(capacity: int, *, per: bool = True, ready: int = 1, batch: int = 1) -> TrainConfig:
    return TrainConfig(
        BUFFER_CAPACITY=capacity,
        MIN_BUFFER_SIZE_TO_TRAIN=ready,
        BATCH_SIZE=batch,
        USE_PER=per,
        PER_BETA_ANNEAL_STEPS=100,
    )


def _rows(ids: list[int]) -> ColumnarBatch:
    """Experiences whose every column encodes their id."""
    n = len(ids)
    marks = np.array(ids, dtype=np.float32)
    policy = np.zeros((n, 6), dtype=np.float32)
    policy[np.arange(n), np.array(ids, dtype=np.int64) % 6] = 1.0
    return ColumnarBatch(
        grid=np.broadcast_to(marks[:, None, None, None], (n, 1, 2, 3)).copy(),
        other_features=np.stack([marks, -marks], axis=1),
        policy_target=policy,
        value_target=np.array(ids, dtype=np.float64) / 7.0,
    )


def _buffer(capacity: int, **kwargs: Any) -> ExperienceBuffer:
    return ExperienceBuffer(_config(capacity, **kwargs), SMALL_ENV, SMALL_MODEL, seed=3)


def _ids(buffer: ExperienceBuffer, slots: np.ndarray[Any, Any]) -> list[int]:
    return [int(v) for v in buffer.columns["other_features"][slots, 0]]


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 12)),
        st.tuples(st.just("update"), st.lists(st.floats(0, 50), min_size=1, max_size=6)),
        st.tuples(st.just("sample"), st.integers(1, 5)),
    ),
    max_size=25,
)


@given(capacity=st.integers(1, 9), ops=_ops)
def test_buffer_matches_a_plain_reference(capacity: int, ops: list[tuple[str, Any]]) -> None:
    buffer = _buffer(capacity)
    reference: list[list[float]] = []  # [id, priority], oldest first
    next_id, max_priority = 0, 1.0
    config = buffer.config
    for op, arg in ops:
        if op == "add":
            ids = list(range(next_id, next_id + arg))
            next_id += arg
            buffer.add_batch(_rows(ids))
            reference += [[i, max_priority] for i in ids]
            reference = reference[-capacity:]
        elif op == "update" and reference:
            slots = np.arange(min(len(arg), len(buffer)))
            errors = np.array(arg[: len(slots)])
            buffer.update_priorities(slots, errors)
            by_id = dict(zip(_ids(buffer, slots), errors.tolist(), strict=True))
            for entry in reference:
                if entry[0] in by_id:
                    entry[1] = (abs(by_id[entry[0]]) + config.PER_EPSILON) ** config.PER_ALPHA
                    max_priority = max(max_priority, entry[1])
        elif op == "sample":
            sample = buffer.sample(arg)
            if len(reference) < arg:
                assert sample is None
                continue
            assert sample is not None
            priority = {i: p for i, p in reference}
            ids = _ids(buffer, sample["indices"])
            assert all(priority[i] > 0 for i in ids)
            assert np.array_equal(
                sample["batch"]["other_features"][:, 0], np.array(ids, np.float32)
            )
            assert np.all(sample["weights"] <= 1.0) and np.isclose(sample["weights"].max(), 1.0)
        assert len(buffer) == len(reference)
        chronological = [int(e[0]["grid"][0, 0, 0]) for e in buffer.to_experiences()]
        assert chronological == [i for i, _ in reference]
        assert math.isclose(buffer.tree.total, sum(p for _, p in reference), rel_tol=1e-9)


def test_prioritised_sampling_frequencies_match_priorities() -> None:
    count = 20
    buffer = _buffer(count)
    buffer.add_batch(_rows(list(range(count))))
    errors = np.linspace(0.1, 3.0, count)
    buffer.update_priorities(np.arange(count), errors)
    draws = np.zeros(count)
    for _ in range(2000):
        sample = buffer.sample(10)
        assert sample is not None
        np.add.at(draws, sample["indices"], 1)
    expected = buffer.tree.leaves() / buffer.tree.total * draws.sum()
    chi2 = float(((draws - expected) ** 2 / expected).sum())
    # The 0.999 quantile of chi-squared with 19 degrees of freedom (Wilson-Hilferty).
    df = count - 1
    critical = df * (1 - 2 / (9 * df) + 3.09 * math.sqrt(2 / (9 * df))) ** 3
    assert chi2 < critical, f"chi2 {chi2:.1f} >= {critical:.1f}"


def test_weights_anneal_towards_one_with_the_step() -> None:
    buffer = _buffer(10)
    buffer.add_batch(_rows(list(range(10))))
    buffer.update_priorities(np.arange(10), np.arange(10.0) ** 2)
    assert buffer._beta(None) == 0.4 and buffer._beta(50) == pytest.approx(0.7)
    assert buffer._beta(10_000) == 1.0


def test_uniform_sampling_draws_without_replacement() -> None:
    buffer = _buffer(10, per=False)
    buffer.add_batch(_rows(list(range(10))))
    sample = buffer.sample(10)
    assert sample is not None
    assert sorted(sample["indices"].tolist()) == list(range(10))
    assert np.all(sample["weights"] == 1.0)


def test_not_ready_until_the_minimum_is_in() -> None:
    buffer = _buffer(10, ready=5)
    buffer.add_batch(_rows([0, 1, 2, 3]))
    assert not buffer.is_ready() and buffer.sample(2) is None
    buffer.add_batch(_rows([4]))
    assert buffer.is_ready() and buffer.sample(2) is not None


def _filled(capacity: int = 50, added: int = 73) -> ExperienceBuffer:
    buffer = _buffer(capacity, batch=8)
    buffer.add_batch(_rows(list(range(added))))
    rng = np.random.default_rng(0)
    buffer.update_priorities(np.arange(0, capacity, 3), rng.random(len(range(0, capacity, 3))))
    buffer.sample(8)  # advance the sampling generator
    return buffer


def test_state_round_trips_through_a_checkpoint_with_identical_next_samples(
    ckpt_dir: Path,
) -> None:
    buffer = _filled()
    with CheckpointManager(ckpt_dir) as manager:
        manager.save(0, {"buffer": buffer.state_dict()})
        manager.wait_until_finished()
        restored_state = manager.restore(0)["buffer"]
    restored = _buffer(50, batch=8)
    restored.load_state_dict(restored_state)
    assert_tree_equal(
        {k: v for k, v in restored.state_dict().items() if k != "rng"},
        {k: v for k, v in buffer.state_dict().items() if k != "rng"},
    )
    assert np.array_equal(restored.tree.tree, buffer.tree.tree)
    for step in range(3):
        a, b = buffer.sample(8, step), restored.sample(8, step)
        assert a is not None and b is not None
        assert_tree_equal(dict(a), dict(b))


def test_loading_into_a_smaller_buffer_keeps_the_newest() -> None:
    buffer = _filled(capacity=50, added=73)
    smaller = _buffer(20, batch=8)
    smaller.load_state_dict(buffer.state_dict())
    oldest_first = [int(e[0]["other_features"][0]) for e in smaller.to_experiences()]
    assert oldest_first == list(range(53, 73))
    assert np.isclose(
        smaller.tree.total,
        sum(buffer.tree.leaves()[s] for s in range(50) if _ids(buffer, np.array([s]))[0] >= 53),
    )


def test_a_state_of_other_shapes_is_refused_before_anything_changes() -> None:
    state = _filled().state_dict()
    other = ExperienceBuffer(_config(50), EnvConfig(), ModelConfig())
    with pytest.raises(ValueError, match="column 'grid'"):
        other.load_state_dict(state)
    assert len(other) == 0


def test_experience_tuples_convert_both_ways() -> None:
    rng = np.random.default_rng(5)
    experiences: list[Experience] = [
        (
            StateType(
                grid=rng.random((1, 2, 3), dtype=np.float32),
                other_features=rng.random(2, dtype=np.float32),
            ),
            {1: 0.25, 4: 0.75},
            float(i),
        )
        for i in range(4)
    ]
    buffer = _buffer(10)
    buffer.add_batch(experiences)
    buffer.add(experiences[0])
    back = buffer.to_experiences()
    assert len(back) == 5
    for (state, policy, value), (s2, p2, v2) in zip(
        experiences + experiences[:1], back, strict=True
    ):
        assert np.array_equal(state["grid"], s2["grid"])
        assert np.array_equal(state["other_features"], s2["other_features"])
        assert p2 == policy and v2 == value
    with pytest.raises(ValueError, match="action outside"):
        buffer.add_batch([(experiences[0][0], {6: 1.0}, 0.0)])
