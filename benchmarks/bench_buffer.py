"""Replay-buffer operations against the way alphatriangle 1.0.0 stored its buffer.

    python benchmarks/bench_buffer.py [--experiences 250000] [--add 1000] [--batch 256]
        [--repeats 20]

Baselines, written here and measured in the same run: a ``deque`` of experience tuples
(state dict, policy dict, value) with a sum tree walked in Python one experience at a time,
as 1.0.0 kept it: the tree in a numpy array and each new experience given the highest leaf
priority (``np.max`` over the leaves, per experience). A second, idealised baseline keeps
the tree in a Python list and gives new experiences a constant priority (no max): the
fastest a per-experience Python buffer can be. Ours: ``ExperienceBuffer`` with
prioritised replay. Both hold the same experiences of the 1.0.0 shapes (grid (1, 8, 15),
30 other features, 360 actions). Memory: the resident size the buffer added, against the
raw bytes of its columns.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import deque
from typing import Any

import numpy as np
from _common import report

from alphatriangle.config import TrainConfig
from alphatriangle.rl.core import ExperienceBuffer
from alphatriangle.utils.types import ColumnarBatch

OPTIONS = {"experiences": 250_000, "add": 1_000, "batch": 256, "repeats": 20}


class PythonSumTree:
    """The classic sum tree, one experience at a time, in Python (``tree`` a list, or a
    numpy array as in 1.0.0)."""

    def __init__(self, capacity: int, *, numpy_tree: bool) -> None:
        self.capacity = capacity
        self.tree: Any = np.zeros(2 * capacity - 1) if numpy_tree else [0.0] * (2 * capacity - 1)
        self.pointer = 0

    def max_priority(self) -> float:
        return float(np.max(self.tree[-self.capacity :]))

    def update(self, index: int, priority: float) -> None:
        change = priority - self.tree[index]
        self.tree[index] = priority
        while index != 0:
            index = (index - 1) // 2
            self.tree[index] += change

    def add(self, priority: float) -> int:
        index = self.pointer + self.capacity - 1
        self.update(index, priority)
        self.pointer = (self.pointer + 1) % self.capacity
        return index

    def get(self, value: float) -> int:
        index = 0
        while True:
            left = 2 * index + 1
            if left >= len(self.tree):
                return index
            if value <= self.tree[left]:
                index = left
            else:
                value -= self.tree[left]
                index = left + 1


def _columns(count: int, rng: np.random.Generator) -> ColumnarBatch:
    policy = rng.random((count, 360), dtype=np.float32)
    return ColumnarBatch(
        grid=rng.random((count, 1, 8, 15), dtype=np.float32),
        other_features=rng.random((count, 30), dtype=np.float32),
        policy_target=policy / policy.sum(axis=1, keepdims=True),
        value_target=rng.standard_normal(count),
    )


def _tuples(columns: ColumnarBatch) -> list[tuple[dict[str, Any], dict[int, float], float]]:
    return [
        (
            {"grid": columns["grid"][i], "other_features": columns["other_features"][i]},
            dict(enumerate(columns["policy_target"][i].tolist())),
            float(columns["value_target"][i]),
        )
        for i in range(len(columns["value_target"]))
    ]


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def main() -> None:  # noqa: PLR0915 - one scenario, read top to bottom
    parser = argparse.ArgumentParser(description=__doc__)
    for name, default in OPTIONS.items():
        parser.add_argument(f"--{name}", type=int, default=default)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    config = TrainConfig(BUFFER_CAPACITY=args.experiences, MIN_BUFFER_SIZE_TO_TRAIN=args.batch)

    before = _rss()
    ours = ExperienceBuffer(config)
    chunk = 10_000
    for start in range(0, args.experiences, chunk):
        ours.add_batch(_columns(min(chunk, args.experiences - start), rng))
    resident = _rss() - before
    raw = sum(column.nbytes for column in ours.columns.values())

    # The baselines hold the same number of experiences (their tuples are built once,
    # outside the timings, and shared: only references are stored, as in a deque, and the
    # 1,000 distinct ones stay in cache, which flatters the baselines' sampling).
    template = _tuples(_columns(args.add, rng))
    baselines: dict[str, tuple[deque[Any], PythonSumTree]] = {}
    for name, numpy_tree in (("1.0.0", True), ("ideal", False)):
        stored: deque[Any] = deque(maxlen=args.experiences)
        tree = PythonSumTree(args.experiences, numpy_tree=numpy_tree)
        for i in range(args.experiences):
            stored.append(template[i % args.add])
            tree.add(1.0)
        baselines[name] = (stored, tree)

    incoming = _columns(args.add, rng)
    incoming_tuples = _tuples(incoming)
    timings: dict[str, list[float]] = {}

    def timed_into(name: str, action: Any) -> Any:
        began = time.perf_counter()
        result = action()
        timings.setdefault(name, []).append(time.perf_counter() - began)
        return result

    def add_1_0_0() -> None:
        stored, tree = baselines["1.0.0"]
        for experience in incoming_tuples:
            stored.append(experience)
            tree.add(tree.max_priority())

    def add_ideal() -> None:
        stored, tree = baselines["ideal"]
        for experience in incoming_tuples:
            stored.append(experience)
            tree.add(1.0)

    def sample_baseline(name: str) -> list[Any]:
        stored, tree = baselines[name]
        segment = tree.tree[0] / args.batch
        picked = []
        for i in range(args.batch):
            index = tree.get(random.uniform(segment * i, segment * (i + 1)))
            picked.append(stored[index - tree.capacity + 1])
        return picked

    def to_training_arrays(picked: list[Any]) -> tuple[Any, ...]:
        """What 1.0.0's learner did with a sampled list before its forward pass."""
        grids = np.stack([state["grid"] for state, _, _ in picked])
        others = np.stack([state["other_features"] for state, _, _ in picked])
        policies = np.zeros((len(picked), 360), dtype=np.float32)
        for row, (_, policy, _) in enumerate(picked):
            for action, probability in policy.items():
                policies[row, action] = probability
        values = np.array([value for _, _, value in picked])
        return grids, others, policies, values

    for step in range(args.repeats):
        timed_into("add 1.0.0", add_1_0_0)
        timed_into("add ideal", add_ideal)
        timed_into("add ours", lambda: ours.add_batch(incoming))
        timed_into("add ours tuples", lambda: ours.add_batch(incoming_tuples))
        timed_into("sample 1.0.0", lambda: sample_baseline("1.0.0"))
        timed_into("sample ideal", lambda: sample_baseline("ideal"))
        sample = timed_into("sample ours", lambda: ours.sample(args.batch, current_train_step=step))  # noqa: B023
        assert sample is not None
        timed_into("train 1.0.0", lambda: to_training_arrays(sample_baseline("1.0.0")))

    def med(name: str) -> float:
        return float(np.median(timings[name]))

    add_base, add_ideal = "add 1,000: 1.0.0 style", "add 1,000: idealised Python"
    sample_base, sample_ideal = "sample 256: 1.0.0 style", "sample 256: idealised Python"
    train_base = "sample 256 to arrays: 1.0.0 style"
    rows = [
        (add_base, med("add 1.0.0"), ""),
        (add_ideal, med("add ideal"), ""),
        ("add 1,000: ExperienceBuffer (columns)", med("add ours"), add_base),
        ("  the same, to the idealised baseline", med("add ours"), add_ideal),
        ("add 1,000: ExperienceBuffer (tuples)", med("add ours tuples"), add_base),
        (sample_base, med("sample 1.0.0"), ""),
        (sample_ideal, med("sample ideal"), ""),
        ("sample 256: ExperienceBuffer", med("sample ours"), sample_base),
        ("  the same, to the idealised baseline", med("sample ours"), sample_ideal),
        (train_base, med("train 1.0.0"), ""),
        ("sample 256 to arrays: ExperienceBuffer", med("sample ours"), train_base),
    ]
    report(
        "bench_buffer",
        rows,
        {
            "experiences": args.experiences,
            "repeats": args.repeats,
            "min_max": {k: [min(v), max(v)] for k, v in timings.items()},
            "resident_bytes": resident,
            "column_bytes": raw,
            "resident_to_columns": resident / raw,
        },
    )
    ratio = resident / raw
    print(f"memory: {resident / 1e6:.0f} MB resident, {raw / 1e6:.0f} MB of columns ({ratio:.3f}x)")


if __name__ == "__main__":
    main()
