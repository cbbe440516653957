"""The experience types of alphatriangle, as 1.0.0 defined them, plus the columnar batch.

A state is what the network sees: ``grid`` of shape (``ModelConfig.GRID_INPUT_CHANNELS``,
``EnvConfig.ROWS``, ``EnvConfig.COLS``), float32 (1.0.0's default: (1, 8, 15)), and
``other_features`` of shape (``ModelConfig.OTHER_NN_INPUT_FEATURES_DIM``,), float32 (30). An
experience is a state, the search's policy target (action -> probability over
``EnvConfig.ACTION_DIM`` actions, 360 by default) and the value target (the return, a float;
the network predicts it as a distribution over ``ModelConfig.NUM_VALUE_ATOMS`` atoms).
``ExperienceBatch`` is 1.0.0's list of experiences; :class:`ColumnarBatch` holds the same as
stacked arrays, which is what the replay buffer stores and samples.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any, TypeAlias, TypedDict

import numpy as np

__all__ = [
    "ActionType",
    "ColumnarBatch",
    "Experience",
    "ExperienceBatch",
    "PERBatchSample",
    "PolicyTargetMapping",
    "PolicyValueOutput",
    "StateType",
    "StatsCollectorData",
]

ActionType: TypeAlias = int


class StateType(TypedDict):
    grid: np.ndarray[Any, np.dtype[np.float32]]  # (C, H, W)
    other_features: np.ndarray[Any, np.dtype[np.float32]]  # (F,)


PolicyTargetMapping: TypeAlias = Mapping[ActionType, float]
PolicyValueOutput: TypeAlias = tuple[Mapping[ActionType, float], float]
Experience: TypeAlias = tuple[StateType, PolicyTargetMapping, float]
ExperienceBatch: TypeAlias = list[Experience]


class ColumnarBatch(TypedDict):
    """Experiences as stacked columns (row i is experience i)."""

    grid: np.ndarray[Any, np.dtype[np.float32]]  # (N, C, H, W)
    other_features: np.ndarray[Any, np.dtype[np.float32]]  # (N, F)
    policy_target: np.ndarray[Any, np.dtype[np.float32]]  # (N, action_dim), dense
    value_target: np.ndarray[Any, np.dtype[np.float64]]  # (N,)


class PERBatchSample(TypedDict):
    """What ``ExperienceBuffer.sample`` returns. ``batch`` is columnar (1.0.0 returned a
    list of tuples; ``ExperienceBuffer.to_experiences`` gives that form); ``indices`` go back
    to ``update_priorities``; ``weights`` are the importance-sampling weights (all ones
    without prioritised replay)."""

    batch: ColumnarBatch
    indices: np.ndarray[Any, np.dtype[np.int64]]
    weights: np.ndarray[Any, np.dtype[np.float32]]


StatsCollectorData: TypeAlias = dict[str, deque[tuple[int, float]]]
