"""Shared types of alphatriangle (see :mod:`alphatriangle.utils.types`)."""

from alphatriangle.utils.types import (
    ActionType,
    ColumnarBatch,
    Experience,
    ExperienceBatch,
    PERBatchSample,
    PolicyTargetMapping,
    PolicyValueOutput,
    StateType,
    StatsCollectorData,
)

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
