"""``save_training_state`` and ``load_initial_state`` against alphatriangle 1.0.0's way.

    python benchmarks/bench_data_manager.py [--experiences 250000] [--policy-entries 360]
        [--repeats 3] [--new 1000] [--updates 256] [--saves 6] [--keep 3] [--whole-first]

The state: the default network, its Adam state and a full replay buffer of the 1.0.0 shapes.
Baselines, measured in the same run: 1.0.0's save, reimplemented here (a ``CheckpointData``
and a ``BufferData`` of experience tuples, each cloudpickled to a file, synchronously), and
its load (unpickling both); a plain copy of the same bytes into preallocated memory (the
floor of any snapshot). Each 1.0.0 policy mapping holds ``--policy-entries`` actions (the
search's visited actions: 360, all of them, in the 1.0.0 run of the fixtures).

Then the buffer's incremental saves: two DataManagers save the same states ``--saves`` times
(the checkpoint and the buffer, ``KEEP_LATEST_CHECKPOINTS=--keep``), one with the default
``INCREMENTAL_BUFFER_SAVES=True``, one with False (the buffer written whole), in turn; between
two saves the buffer takes ``--new`` experiences and ``--updates`` priority updates. Measured:
the bytes each save writes for the buffer (its files no other step links), the disk the
kept steps' buffer files take (each file once), the stall, and ``load_initial_state`` of the
newest step (interleaved, page cache warm). The DataManager created first stalls a few
percent longer whatever it saves (see ``bench_incremental.py``): ``--whole-first`` swaps.
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
from _common import disk_bytes, incremental_kinds, report

from alphatriangle.config import EnvConfig, ModelConfig, PersistenceConfig, TrainConfig
from alphatriangle.data import BufferData, CheckpointData, DataManager
from alphatriangle.nn import NeuralNetwork
from alphatriangle.rl.core import ExperienceBuffer
from alphatriangle.utils.types import ColumnarBatch

OPTIONS = {
    "experiences": 250_000,
    "policy_entries": 360,
    "repeats": 3,
    "new": 1000,
    "updates": 256,
    "saves": 6,
    "keep": 3,
}


def _fill(buffer: ExperienceBuffer, count: int, entries: int, rng: np.random.Generator) -> None:
    chunk = min(count, 10_000)
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        policy = np.zeros((n, 360), dtype=np.float32)
        for row in range(n):  # visit counts differ from one search to the next
            visits = rng.random(entries, dtype=np.float32) + 0.01
            policy[row, rng.choice(360, entries, replace=False)] = visits / visits.sum()
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
    for name, default in OPTIONS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    parser.add_argument("--whole-first", action="store_true")
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
    incremental = _incremental_saves(
        args, nn=nn, optimizer=optimizer, buffer=buffer, train=train, rng=rng
    )

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
        ("stall, buffer written whole", incremental.pop("stall whole"), ""),
        (
            "stall, buffer incremental",
            incremental.pop("stall incremental"),
            "stall, buffer written whole",
        ),
        ("load, buffer written whole", incremental.pop("load whole"), ""),
        (
            "load, buffer incremental",
            incremental.pop("load incremental"),
            "load, buffer written whole",
        ),
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
            "incremental": incremental,
        },
    )
    print(f"buffer on disk: {buffer_on_disk / 1e6:.0f} MB; 1.0.0 pickle {pickle_size / 1e6:.0f} MB")
    written = incremental["buffer_written_bytes"]
    print(
        f"buffer saves: first {written[0] / 1e6:.1f} MB, later at most {max(written[1:]) / 1e6:.2f}"
        f" MB ({incremental['later_save_ratio_max']:.2%}); {args.saves} saves, {args.keep} kept:"
        f" {incremental['disk_ratio_incremental']:.2f}x one save on disk (whole:"
        f" {incremental['disk_ratio_whole']:.2f}x)"
    )


def _buffer_files(step_dir: Path) -> list[os.stat_result]:
    return [path.stat() for path in step_dir.glob("buffer.*")]


def _incremental_saves(
    args: argparse.Namespace,
    *,
    nn: NeuralNetwork,
    optimizer: torch.optim.Optimizer,
    buffer: ExperienceBuffer,
    train: TrainConfig,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """The buffer saved ``args.saves`` times, incrementally and whole (see the docstring)."""
    root = Path(tempfile.mkdtemp(prefix="bench_dm_incremental_"))
    kinds = incremental_kinds(whole_first=args.whole_first)
    persists = {
        kind: PersistenceConfig(
            ROOT_DATA_DIR=str(root / kind),
            MLFLOW_SYNC=False,
            KEEP_LATEST_CHECKPOINTS=args.keep,
            KEEP_BEST_CHECKPOINTS=0,
            INCREMENTAL_BUFFER_SAVES=flag,
        )
        for kind, flag in kinds.items()
    }
    stalls: dict[str, list[float]] = {kind: [] for kind in kinds}
    written: dict[str, list[int]] = {kind: [] for kind in kinds}
    loads: dict[str, list[float]] = {kind: [] for kind in kinds}
    disk: dict[str, list[int]] = {kind: [] for kind in kinds}  # after each save
    try:
        managers = {kind: DataManager(persist, train) for kind, persist in persists.items()}
        for step in range(1, args.saves + 1):
            order = list(managers.items())
            for kind, dm in order if step % 2 else order[::-1]:  # each goes first alike
                began = time.perf_counter()
                handle = dm.save_training_state(
                    nn, optimizer, None, buffer, step, 0, 0, is_final=True
                )
                stalls[kind].append(time.perf_counter() - began)
                assert handle is not None
                step_dir = handle.result()
                dm.wait_until_finished()
                files = _buffer_files(step_dir)
                assert files, "the buffer was not saved"
                written[kind].append(sum(f.st_size for f in files if f.st_nlink == 1))
                disk[kind].append(disk_bytes(dm.checkpoint_dir.glob("step_*/buffer.*")))
            _fill(buffer, args.new, args.policy_entries, rng)
            sample = buffer.sample(args.updates)
            assert sample is not None
            buffer.update_priorities(sample["indices"], rng.random(args.updates))
        for dm in managers.values():
            dm.close()
        for round_ in range(args.repeats + 1):
            for kind, persist in persists.items():
                with DataManager(persist, train) as dm:
                    began = time.perf_counter()
                    dm.load_initial_state()
                    if round_:  # the first round warms the page cache
                        loads[kind].append(time.perf_counter() - began)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    first = written["incremental"][0]
    return {
        "stall whole": stalls["whole"][1:],
        "stall incremental": stalls["incremental"][1:],
        "load whole": loads["whole"],
        "load incremental": loads["incremental"],
        "created_first": next(iter(kinds)),
        "new": args.new,
        "updates": args.updates,
        "keep": args.keep,
        "buffer_written_bytes": written["incremental"],
        "buffer_written_bytes_whole": written["whole"],
        "later_save_ratio_max": max(written["incremental"][1:]) / first,
        "buffer_disk_bytes": disk["incremental"],
        "buffer_disk_bytes_whole": disk["whole"],
        "disk_ratio_incremental": disk["incremental"][-1] / first,
        "disk_ratio_whole": disk["whole"][-1] / written["whole"][0],
    }


if __name__ == "__main__":
    main()
