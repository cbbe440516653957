"""The replay buffer: a ring of preallocated numpy columns, with prioritised sampling.

Columns: ``grid`` (capacity, C, H, W) float32, ``other_features`` (capacity, F) float32,
``policy_target`` (capacity, ACTION_DIM) float32 (dense), ``value_target`` (capacity,)
float64. Nothing is a Python object per experience: adding 1,000 experiences is a few slice
assignments, sampling a batch is one vectorised walk of the sum tree and one gather per
column, and the buffer's state is a handful of arrays that a checkpoint writes out of band.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from alphatriangle.config import EnvConfig, ModelConfig, TrainConfig
from alphatriangle.rl.core.sum_tree import SumTree
from alphatriangle.utils.types import (
    ColumnarBatch,
    Experience,
    ExperienceBatch,
    PERBatchSample,
    StateType,
)

__all__ = ["ExperienceBuffer", "experiences_from_state", "experiences_to_columns"]

STATE_FORMAT = "alphatriangle.ExperienceBuffer"
STATE_VERSION = 1
_COLUMNS = ("grid", "other_features", "policy_target", "value_target")


def experiences_to_columns(experiences: Sequence[Experience], action_dim: int) -> ColumnarBatch:
    """1.0.0's experience tuples as columns; policy mappings become dense rows (actions
    missing from a mapping get probability 0)."""
    count = len(experiences)
    policy = np.zeros((count, action_dim), dtype=np.float32)
    for row, (_, mapping, _) in enumerate(experiences):
        if mapping:
            actions = np.fromiter(mapping.keys(), dtype=np.int64, count=len(mapping))
            if actions.min() < 0 or actions.max() >= action_dim:
                raise ValueError(
                    f"experience {row} has an action outside [0, {action_dim}): "
                    f"{int(actions.min())}..{int(actions.max())}"
                )
            policy[row, actions] = np.fromiter(mapping.values(), np.float64, len(mapping))
    return ColumnarBatch(
        grid=np.stack([np.asarray(e[0]["grid"], dtype=np.float32) for e in experiences]),
        other_features=np.stack(
            [np.asarray(e[0]["other_features"], dtype=np.float32) for e in experiences]
        ),
        policy_target=policy,
        value_target=np.fromiter((e[2] for e in experiences), np.float64, count),
    )


class ExperienceBuffer:
    """Replay buffer of ``config.BUFFER_CAPACITY`` experiences (1.0.0's interface).

    ``add`` / ``add_batch`` take experience tuples or a :class:`ColumnarBatch`; ``sample``
    returns a :class:`PERBatchSample` (None until ``is_ready()``): uniform, or with
    ``USE_PER`` proportional to priority, with importance weights whose beta anneals with
    ``current_train_step``. New experiences get the highest priority seen so far.
    ``state_dict()`` / ``load_state_dict()`` round-trip everything: contents, order,
    priorities and the sampling generator, so that the next samples are the same.
    """

    def __init__(
        self,
        config: TrainConfig,
        env_config: EnvConfig | None = None,
        model_config: ModelConfig | None = None,
        *,
        seed: int | None = None,
    ) -> None:
        env_config = env_config or EnvConfig()
        model_config = model_config or ModelConfig()
        self.config = config
        self.capacity = config.BUFFER_CAPACITY
        self.use_per = config.USE_PER
        self.action_dim = env_config.ACTION_DIM
        self.grid_shape = (model_config.GRID_INPUT_CHANNELS, env_config.ROWS, env_config.COLS)
        self.other_dim = model_config.OTHER_NN_INPUT_FEATURES_DIM
        # np.empty: pages are touched as experiences arrive, not at construction.
        self.columns: dict[str, np.ndarray[Any, Any]] = {
            "grid": np.empty((self.capacity, *self.grid_shape), dtype=np.float32),
            "other_features": np.empty((self.capacity, self.other_dim), dtype=np.float32),
            "policy_target": np.empty((self.capacity, self.action_dim), dtype=np.float32),
            "value_target": np.empty(self.capacity, dtype=np.float64),
        }
        self.tree = SumTree(self.capacity)
        self.max_priority = 1.0
        self.size = 0
        self.cursor = 0  # the slot the next experience goes to
        self.rng = np.random.default_rng(config.RANDOM_SEED if seed is None else seed)

    # -- adding ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.size

    def is_ready(self) -> bool:
        return self.size >= self.config.MIN_BUFFER_SIZE_TO_TRAIN

    def add(self, experience: Experience) -> None:
        self.add_batch([experience])

    def add_batch(self, experiences: ExperienceBatch | ColumnarBatch) -> None:
        """Append experiences, overwriting the oldest once full. 1.0.0's experience tuples
        (a 1.0.0 ``buffer.pkl``'s ``buffer_list``) are taken too; each gets the highest
        priority seen so far, 1.0.0 having saved no priorities. ValueError naming the column
        whose shape is not the configs' (a grid of other channels, say)."""
        batch = (
            experiences
            if isinstance(experiences, Mapping)
            else experiences_to_columns(experiences, self.action_dim)
        )
        self._add_columns(batch)

    def _write(self, slot: int, batch: Mapping[str, Any], start: int, stop: int) -> None:
        rows = stop - start
        if rows <= 0:
            return
        for name in _COLUMNS:
            self.columns[name][slot : slot + rows] = batch[name][start:stop]
        self.tree.set_range(slot, np.full(rows, self.max_priority))

    def _add_columns(self, batch: Mapping[str, Any]) -> None:
        count = len(batch["value_target"])
        expected = {
            "grid": self.grid_shape,
            "other_features": (self.other_dim,),
            "policy_target": (self.action_dim,),
            "value_target": (),
        }
        for name, shape in expected.items():
            if batch[name].shape != (count, *shape):
                raise ValueError(
                    f"column {name!r} has shape {batch[name].shape}, expected {(count, *shape)}"
                )
        if count == 0:
            return
        skip = max(0, count - self.capacity)  # more than fits: only the newest stay
        count -= skip
        first = min(count, self.capacity - self.cursor)  # up to the end of the ring
        self._write(self.cursor, batch, skip, skip + first)
        self._write(0, batch, skip + first, skip + count)  # the rest wraps around
        self.cursor = (self.cursor + count) % self.capacity
        self.size = min(self.capacity, self.size + count)

    # -- sampling -------------------------------------------------------------------------

    def _beta(self, current_train_step: int | None) -> float:
        config = self.config
        if current_train_step is None:
            return config.PER_BETA_INITIAL
        fraction = min(1.0, max(0, current_train_step) / config.per_beta_anneal_steps)
        return config.PER_BETA_INITIAL + fraction * (
            config.PER_BETA_FINAL - config.PER_BETA_INITIAL
        )

    def sample(
        self, batch_size: int, current_train_step: int | None = None
    ) -> PERBatchSample | None:
        """A batch, or None while the buffer is not ready (or holds fewer than
        ``batch_size``). Uniform sampling draws without replacement; prioritised sampling
        draws one experience from each of ``batch_size`` equal slices of the total priority."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not self.is_ready() or self.size < batch_size:
            return None
        if self.use_per:
            total = self.tree.total
            segment = total / batch_size
            values = (np.arange(batch_size) + self.rng.random(batch_size)) * segment
            slots = self.tree.find(values)
            probabilities = self.tree.leaves()[slots] / total
            raw = (self.size * probabilities) ** -self._beta(current_train_step)
            weights = np.asarray(raw / raw.max(), dtype=np.float32)
        else:
            slots = self.rng.choice(self.size, batch_size, replace=False)
            weights = np.ones(batch_size, dtype=np.float32)
        batch = ColumnarBatch(
            grid=self.columns["grid"][slots],
            other_features=self.columns["other_features"][slots],
            policy_target=self.columns["policy_target"][slots],
            value_target=self.columns["value_target"][slots],
        )
        return PERBatchSample(batch=batch, indices=slots.astype(np.int64), weights=weights)

    def update_priorities(
        self, tree_indices: np.ndarray[Any, Any], td_errors: np.ndarray[Any, Any]
    ) -> None:
        """New priorities ``(|td_error| + PER_EPSILON) ** PER_ALPHA`` for the sampled
        ``indices`` (as ``sample`` returned them; a no-op without prioritised replay)."""
        if not self.use_per:
            return
        indices = np.asarray(tree_indices, dtype=np.int64)
        errors = np.asarray(td_errors, dtype=np.float64)
        if indices.shape != errors.shape:
            raise ValueError(f"{indices.shape[0]} indices but {errors.shape} td errors")
        if len(indices) and (indices.min() < 0 or indices.max() >= self.size):
            raise IndexError(f"indices must lie in [0, {self.size})")
        if not np.all(np.isfinite(errors)):
            raise ValueError("td_errors must be finite")
        priorities = (np.abs(errors) + self.config.PER_EPSILON) ** self.config.PER_ALPHA
        self.tree.set(indices, priorities)
        if len(priorities):
            self.max_priority = max(self.max_priority, float(priorities.max()))

    # -- state ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild this buffer exactly, as a state tree of arrays
        (views of the live columns: a checkpoint's save copies them).

        Columns and priorities are in slot order (the ring as it lies in memory), not oldest
        first: between two states, adding ``k`` experiences changes only the ``k`` rows from
        the old cursor on (two ranges when they wrap), and priority updates only the rows
        updated, so a checkpoint that stores arrays in chunks shares every other chunk
        with the previous save. Oldest-first order would shift every row at each add once
        the buffer is full."""
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "capacity": self.capacity,
            "size": self.size,
            "cursor": self.cursor,
            "max_priority": self.max_priority,
            "columns": {name: self.columns[name][: self.size] for name in _COLUMNS},
            "priorities": self.tree.leaves()[: self.size],
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`. With another capacity, the newest experiences
        that fit are kept, in order, with their priorities. Raises ValueError for a state of
        another format or other shapes, before changing anything."""
        if state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
            raise ValueError(
                f"not an ExperienceBuffer state of version {STATE_VERSION}: "
                f"{state.get('format')!r} {state.get('version')!r}"
            )
        size, capacity, cursor = int(state["size"]), int(state["capacity"]), int(state["cursor"])
        columns = state["columns"]
        priorities = np.asarray(state["priorities"], dtype=np.float64)
        if not 0 <= size <= capacity or not 0 <= cursor < max(capacity, 1):
            raise ValueError(f"inconsistent buffer state: size {size}, capacity {capacity}")
        for name in _COLUMNS:
            if (
                columns[name].shape[1:] != self.columns[name].shape[1:]
                or len(columns[name]) != size
            ):
                raise ValueError(
                    f"column {name!r} has shape {columns[name].shape}; this buffer holds "
                    f"{(size, *self.columns[name].shape[1:])}"
                )
        if priorities.shape != (size,):
            raise ValueError(f"priorities have shape {priorities.shape}, expected {(size,)}")
        if capacity == self.capacity:
            order = np.arange(size)
            self.cursor = cursor
        else:  # oldest to newest in the saved ring, then the newest that fit
            saved = (
                np.arange(size) if size < capacity else (np.arange(capacity) + cursor) % capacity
            )
            order = saved[-self.capacity :]
            self.cursor = len(order) % self.capacity
        count = len(order)
        for name in _COLUMNS:
            self.columns[name][:count] = columns[name][order]
        leaves = self.tree.leaves()
        leaves[:] = 0.0
        leaves[:count] = priorities[order]
        self.tree.rebuild()
        self.size = count
        self.max_priority = float(state["max_priority"])
        self.rng.bit_generator.state = dict(state["rng"])

    # -- 1.0.0 form -----------------------------------------------------------------------

    def to_experiences(self) -> ExperienceBatch:
        """The contents as 1.0.0's list of experience tuples, oldest first (policy mappings
        list the actions of non-zero probability)."""
        return experiences_from_state(self.state_dict())


def experiences_from_state(state: Mapping[str, Any]) -> ExperienceBatch:
    """The experiences of an :meth:`ExperienceBuffer.state_dict` as 1.0.0's list of
    experience tuples, oldest first (policy mappings list the actions of non-zero
    probability)."""
    size, capacity, cursor = int(state["size"]), int(state["capacity"]), int(state["cursor"])
    slots = np.arange(size) if size < capacity else (np.arange(capacity) + cursor) % capacity
    columns = state["columns"]
    experiences: ExperienceBatch = []
    for slot in slots:
        policy = columns["policy_target"][slot]
        actions = np.flatnonzero(policy)
        grid = np.array(columns["grid"][slot], dtype=np.float32)
        other = np.array(columns["other_features"][slot], dtype=np.float32)
        mapping = dict(zip(actions.tolist(), policy[actions].tolist(), strict=True))
        experiences.append(
            (
                StateType(grid=grid, other_features=other),
                mapping,
                float(columns["value_target"][slot]),
            )
        )
    return experiences
