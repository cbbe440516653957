"""``save_training_state`` and ``load_initial_state`` against alphatriangle 1.0.0's way.

    python benchmarks/bench_data_manager.py [--experiences 250000] [--policy-entries 20]
        [--repeats 3]

The state: the default network, its Adam state and a full replay buffer of the 1.0.0 shapes.
Baselines, measured in the same run: 1.0.0's save, reimplemented here (a ``CheckpointData``
and a ``BufferData`` of experience tuples, each cloudpickled to a file, synchronously), and
its load (unpickling both); a plain copy of the same bytes into preallocated memory (the
floor of any snapshot). Each 1.0.0 policy mapping holds ``--policy-entries`` actions (the
search's visited actions: 360, all of them, in the 1.0.0 run of the fixtures).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import torch
from _common import report

from alphatriangle.config import EnvConfig, ModelConfig, PersistenceConfig, TrainConfig
from alphatriangle.data import BufferData, CheckpointData, DataManager
from alphatriangle.nn import NeuralNetwork
from alphatriangle.rl.core import ExperienceBuffer
from alphatriangle.utils.types import ColumnarBatch

OPTIONS = {"experiences": 250_000, "policy_entries": 360, "repeats": 3}


def _fill(buffer: ExperienceBuffer, count: int, entries: int, rng: np.random.Generator) -> None:
    chunk = 10_000
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        policy = np.zeros((n, 360), dtype=np.float32)
        for row in range(n):
            policy[row, rng.choice(360, entries, replace=False)] = 1.0 / entries
        buffer.add_batch(
            ColumnarBatch(
                grid=rng.random((n, 1, 8, 15), dtype=np.float32),
                other_features=rng.random((n, 30), dtype=np.float32),
                policy_target=policy,
                value_target=rng.standard_normal(n),
            )
        )


def _save_1_0_0(checkpoint: CheckpointData, buffer: BufferData, directory: Path) -> None:
    for name, data in (("latest.pkl", checkpoint), ("buffer.pkl", buffer)):
        with (directory / name).open("wb") as file:
            cloudpickle.dump(data, file)
            file.flush()
            os.fsync(file.fileno())


def _load_1_0_0(directory: Path) -> Any:
    with (directory / "latest.pkl").open("rb") as file:
        checkpoint = cloudpickle.load(file)
    with (directory / "buffer.pkl").open("rb") as file:
        buffer = cloudpickle.load(file)
    return checkpoint, buffer


def main() -> None:  # noqa: PLR0915 - one scenario, read top to bottom
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--experiences", type=int, default=OPTIONS["experiences"])
    parser.add_argument("--policy-entries", type=int, default=OPTIONS["policy_entries"])
    parser.add_argument("--repeats", type=int, default=OPTIONS["repeats"])
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_dm_"))
    rng = np.random.default_rng(0)
    train = TrainConfig(
        RUN_NAME="bench_run", BUFFER_CAPACITY=args.experiences, DEVICE="cpu",
        CHECKPOINT_SAVE_FREQ_STEPS=1,
    )  # fmt: skip
    nn = NeuralNetwork(ModelConfig(), EnvConfig(), train, torch.device("cpu"))
    optimizer = torch.optim.Adam(nn.model.parameters())
    nn.model(torch.zeros(2, 1, 8, 15), torch.zeros(2, 30))[0].sum().backward()  # type: ignore[no-untyped-call]
    optimizer.step()  # Adam's moments exist
    buffer = ExperienceBuffer(train)
    _fill(buffer, args.experiences, args.policy_entries, rng)
    legacy_buffer = BufferData(buffer_list=buffer.to_experiences())
    persist = PersistenceConfig(ROOT_DATA_DIR=str(root / "data"), MLFLOW_SYNC=False)

    arrays = [*nn.model.state_dict().values(), *buffer.state_dict()["columns"].values()]
    arrays += [t for s in optimizer.state_dict()["state"].values() for t in s.values()]
    targets = [
        np.empty_like(a) if isinstance(a, np.ndarray) else torch.empty_like(a) for a in arrays
    ]

    def plain_copy() -> None:
        for source, target in zip(arrays, targets, strict=True):
            if isinstance(source, np.ndarray):
                np.copyto(target, source)
            else:
                target.copy_(source)

    plain_copy()
    copies, stalls, loads, old_saves, old_loads = [], [], [], [], []
    with DataManager(persist, train) as dm:
        for repeat in range(args.repeats + 1):
            began = time.perf_counter()
            plain_copy()
            copy_seconds = time.perf_counter() - began
            began = time.perf_counter()
            handle = dm.save_training_state(
                nn, optimizer, None, buffer, repeat + 1, 0, 0, is_final=True
            )
            stall = time.perf_counter() - began
            assert handle is not None
            handle.result()
            if repeat:  # the first save allocates the staging buffers
                copies.append(copy_seconds)
                stalls.append(stall)
    buffer_on_disk = sum(
        f.stat().st_size
        for f in (dm.checkpoint_dir / f"step_{args.repeats + 1:09d}").glob("buffer.*")
    )
    warm: dict[str, list[float]] = {"mmap": [], "copy": []}
    for mode, times in warm.items():  # repeated in one process: the page cache warm
        mode_persist = persist.model_copy(update={"RESTORE_MODE": mode})
        for _ in range(args.repeats + 1):
            with DataManager(mode_persist, train) as dm:
                began = time.perf_counter()
                dm.load_initial_state()
                times.append(time.perf_counter() - began)
        del times[0]  # the first read of the files
    for _ in range(args.repeats):
        with DataManager(persist, train) as dm:
            began = time.perf_counter()
            loaded = dm.load_initial_state()
            loads.append(time.perf_counter() - began)
        assert loaded.checkpoint_data is not None
        checkpoint = loaded.checkpoint_data
        old_dir = root / "old"
        old_dir.mkdir(exist_ok=True)
        began = time.perf_counter()
        _save_1_0_0(checkpoint, legacy_buffer, old_dir)
        old_saves.append(time.perf_counter() - began)
        began = time.perf_counter()
        _load_1_0_0(old_dir)
        old_loads.append(time.perf_counter() - began)
    pickle_size = (root / "old" / "buffer.pkl").stat().st_size
    shutil.rmtree(root, ignore_errors=True)

    def med(values: list[float]) -> float:
        return float(np.median(values))

    rows = [
        ("1.0.0 save (cloudpickle, synchronous)", med(old_saves), ""),
        ("plain copy of the same bytes", med(copies), ""),
        ("save_training_state stall", med(stalls), "1.0.0 save (cloudpickle, synchronous)"),
        ("  the same, to the plain copy", med(stalls), "plain copy of the same bytes"),
        ("1.0.0 load (unpickle)", med(old_loads), ""),
        ("load_initial_state (verified)", med(loads), "1.0.0 load (unpickle)"),
        ("load_initial_state, warm, mapped", warm["mmap"], "1.0.0 load (unpickle)"),
        ("load_initial_state, warm, restore_mode=copy", warm["copy"], "1.0.0 load (unpickle)"),
    ]
    report(
        "bench_data_manager",
        rows,
        {
            "experiences": args.experiences,
            "policy_entries": args.policy_entries,
            "buffer_bytes_on_disk": buffer_on_disk,
            "buffer_pickle_bytes": pickle_size,
            "repeats": args.repeats,
        },
    )
    print(f"buffer on disk: {buffer_on_disk / 1e6:.0f} MB; 1.0.0 pickle {pickle_size / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
