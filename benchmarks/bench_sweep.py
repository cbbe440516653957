"""Save and restore across state sizes, against the machine's floors and every peer.

    python benchmarks/bench_sweep.py [--sizes 10,100,500,2000] [--repeats 3] [--dir PATH]

The state at each size (MB): a model (a quarter of the bytes, 24 tensors), its Adam state
(half: ``exp_avg`` and ``exp_avg_sq`` per parameter, a step each) and arrays (a quarter:
replay-buffer columns as numpy arrays). Per size, each figure is measured ``--repeats``
times; the JSON keeps the median, min and max of each.

- **stall**: how long ``save`` blocks the caller. Floor: copying the same bytes into
  preallocated memory (for this project's saves, ``--warm-inner`` of them per repeat, each
  timed alternately with the copy after one untimed pair; for the peers, the copy timed
  once per repeat).
  Synchronous peers block for their whole save.
- **commit**: save called -> durable on disk (this project: the median of those saves).
  Floor: the device's limit, the same bytes (already in page-aligned memory) written with
  ``O_DIRECT`` to one file, one fsync (buffered where the file system refuses
  ``O_DIRECT``).
- **restore (warm)**: page cache warm. Floor: an xxh3 pass over the memory-mapped file
  (for this project's restores, the pass over its own data file, timed alternately with
  them; for the peers, over the floor's file).
- **restore (cold)**: after the checkpoint's files were dropped from the page cache
  (``posix_fadvise(DONTNEED)`` after ``sync``, which needs no privileges). Floor: the same
  pass over the cold file.

Peers: ``torch.save`` / ``torch.load`` (and ``torch.load(mmap=True)``, lazy, and with an
xxh3 pass over its tensors to compare like with like), safetensors (``save_file`` /
``load_file``, likewise), a synchronous cloudpickle of the whole state (what alphatriangle
1.0.0 did), PyTorch DCP ``async_save`` / ``load`` into preallocated tensors, and Orbax
(``StandardCheckpointer``, async, the state handed over as numpy arrays). A peer that is not
installed is reported as absent, with the reason.
"""

from __future__ import annotations

import argparse
import functools
import gc
import mmap
import os
import shutil
import statistics
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xxhash
from _common import DirectWrite, filesystem, report, write_durably

from alphatriangle.data import CheckpointManager, CheckpointManagerOptions, KeepLatest

OPTIONS = {"sizes": "10,100,500,2000", "repeats": 3}

STALL, COMMIT, WARM, COLD = "stall", "commit", "restore (warm)", "restore (cold)"
FLOOR = "floor"
PAIRED = " #paired floor"  # a floor measured alternately with one library's saves/restores


# -- the state -----------------------------------------------------------------------------


def sweep_state(total_mb: float) -> dict[str, Any]:
    total = int(total_mb * 1e6)
    generator = torch.Generator().manual_seed(0)
    per_param = total // 4 // 24 // 4  # float32 elements per parameter

    def tensor(count: int) -> torch.Tensor:
        return torch.randn(max(1, count), generator=generator)

    model = {f"layer{i:02d}.weight": tensor(per_param) for i in range(24)}
    optimizer = {
        "state": {
            i: {
                "step": torch.tensor(100.0),
                "exp_avg": tensor(per_param),
                "exp_avg_sq": tensor(per_param),
            }
            for i in range(24)
        },
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": list(range(24))}],
    }
    rows = max(1, total // 4 // (240 * 4 + 360 * 4 + 8))
    arrays = {
        "grid": tensor(rows * 240).numpy().reshape(rows, 240),
        "policy": tensor(rows * 360).numpy().reshape(rows, 360),
        "value": np.linspace(0, 1, rows),
    }
    return {"model": model, "optimizer": optimizer, "buffer": arrays}


def leaves(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from leaves(value, f"{prefix}{key}.")
    elif isinstance(tree, (list, tuple)):
        for index, value in enumerate(tree):
            yield from leaves(value, f"{prefix}{index}.")
    elif isinstance(tree, (torch.Tensor, np.ndarray)):
        yield prefix.rstrip("."), tree


def flat_tensors(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: v if isinstance(v, torch.Tensor) else torch.from_numpy(v) for k, v in leaves(state)}


def as_numpy(tree: Any) -> Any:
    """The state for Orbax: string keys, numpy leaves."""
    if isinstance(tree, dict):
        return {str(k): as_numpy(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return {str(i): as_numpy(v) for i, v in enumerate(tree)}
    if isinstance(tree, torch.Tensor):
        return tree.numpy()
    return tree


def nbytes_of(state: dict[str, Any]) -> int:
    return sum(int(v.nbytes) for _, v in leaves(state))


# -- helpers -------------------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


SETTINGS = {"warm_inner": 5}  # warm restores are short: each repeat takes a median of many


def warm(fn: Callable[[], object]) -> float:
    """Median of ``--warm-inner`` timings of ``fn``, its result freed between them."""
    times = []
    for _ in range(SETTINGS["warm_inner"]):
        times.append(timed(fn))
        gc.collect()
    return statistics.median(times)


def warm_paired(fn: Callable[[], object], floor: Callable[[], object]) -> tuple[float, float]:
    """Medians of ``fn`` and ``floor`` timed alternately (the same page cache, the same
    moment of a noisy machine)."""
    times: list[float] = []
    floors: list[float] = []
    for _ in range(SETTINGS["warm_inner"]):
        times.append(timed(fn))
        gc.collect()
        floors.append(timed(floor))
    return statistics.median(times), statistics.median(floors)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def warm_and_cold(load: Callable[[], object], path: Path) -> tuple[float, float]:
    """``load`` timed with the page cache warm (after one untimed run), then once after
    ``path`` was dropped from it."""
    load()
    warm_seconds = warm(load)
    drop_cache(path)
    cold_seconds = timed(load)
    gc.collect()
    return warm_seconds, cold_seconds


def drop_cache(path: Path) -> None:
    """Drop the files under ``path`` from the page cache (they are clean after ``sync``)."""
    os.sync()
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def hash_file(path: Path) -> str:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return ""
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapping:
            hasher = xxhash.xxh3_64()
            view = memoryview(mapping)
            for start in range(0, size, 8 << 20):
                hasher.update(view[start : start + (8 << 20)])
            view.release()
            return hasher.hexdigest()


def hash_tensors(tensors: Any) -> None:
    hasher = xxhash.xxh3_64()
    for _, value in leaves(tensors if isinstance(tensors, dict) else dict(tensors)):
        array = value.numpy() if isinstance(value, torch.Tensor) else value
        hasher.update(memoryview(np.ascontiguousarray(array)).cast("B"))


# -- the libraries: each returns {metric: seconds} for one repeat ----------------------------


class CopyFloor:
    """The stall floor: the state's bytes copied into preallocated memory (touched once when
    made: first touch is allocation, not copying)."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.values = [v.numpy() if isinstance(v, torch.Tensor) else v for _, v in leaves(state)]
        self.targets = [np.empty_like(v) for v in self.values]
        self()

    def __call__(self) -> None:
        for source, target in zip(self.values, self.targets, strict=True):
            np.copyto(target, source)


def run_floors(state: dict[str, Any], root: Path) -> dict[str, float]:
    copy = CopyFloor(state)
    stall = timed(copy)
    values = copy.values
    del copy  # a training loop holds no second copy of its state while it saves
    path = root / "floor.bin"
    direct = DirectWrite(values)
    commit = timed(functools.partial(direct, path))
    del direct
    hash_file(path)
    warm_floor = warm(lambda: hash_file(path))
    drop_cache(path)
    cold = timed(lambda: hash_file(path))
    path.unlink()
    return {STALL: stall, COMMIT: commit, WARM: warm_floor, COLD: cold}


class Ours:
    name = "alphatriangle"

    def __init__(self, root: Path, state: dict[str, Any]) -> None:
        self.directory = root / "ours"
        self.manager = CheckpointManager(
            self.directory, CheckpointManagerOptions(retention=KeepLatest(1))
        )
        self.step = 0
        handle = self.manager.save(self.step, state)  # the first save allocates staging
        assert handle is not None
        handle.result()

    def run(self, state: dict[str, Any], results: dict[str, dict[str, float]]) -> None:
        # Saves timed alternately with the copy floor (the same caches, the same moment of a
        # noisy machine), as the restores below are with the checksum pass: medians of
        # ``--warm-inner`` of each.
        copy = CopyFloor(state)
        stalls, floors, commits = [], [], []
        # One untimed pair first: the floor's first copy would follow its own first touch
        # (cache hot), and this save the previous repeat's restores.
        copy()
        self.step += 1
        handle = self.manager.save(self.step, state)
        assert handle is not None
        handle.result()
        self.manager.wait_until_finished()
        for _ in range(SETTINGS["warm_inner"]):
            floors.append(timed(copy))
            self.step += 1
            began = time.perf_counter()
            handle = self.manager.save(self.step, state)
            stalls.append(time.perf_counter() - began)
            assert handle is not None
            step_dir = handle.result()
            commits.append(time.perf_counter() - began)
            self.manager.wait_until_finished()
        del copy
        stall, commit = statistics.median(stalls), statistics.median(commits)
        restore = lambda: self.manager.restore(self.step)  # noqa: E731
        data_file = step_dir / "state.data"
        restore()
        # Restores are also timed against the floor pass over this very file, alternately.
        warm_restore, warm_floor = warm_paired(restore, lambda: hash_file(data_file))
        drop_cache(step_dir)
        cold = timed(restore)
        gc.collect()
        drop_cache(step_dir)
        cold_floor = timed(lambda: hash_file(data_file))
        results[self.name] = {STALL: stall, COMMIT: commit, WARM: warm_restore, COLD: cold}
        results[self.name + PAIRED] = {
            STALL: statistics.median(floors),
            WARM: warm_floor,
            COLD: cold_floor,
        }
        copying = CheckpointManager(
            self.directory, CheckpointManagerOptions(read_only=True, restore_mode="copy")
        )
        warm_copy = warm(lambda: copying.restore(self.step))
        drop_cache(step_dir)
        cold_copy = timed(lambda: copying.restore(self.step))
        copying.close()
        results["alphatriangle (restore_mode=copy)"] = {WARM: warm_copy, COLD: cold_copy}

    def close(self) -> None:
        self.manager.close()


def run_torch(state: dict[str, Any], root: Path, results: dict[str, dict[str, float]]) -> None:
    path = root / "torch.pt"

    def save() -> None:
        write_durably(path, lambda f: torch.save(state, f))

    seconds = timed(save)
    load = lambda: torch.load(path, weights_only=False)  # noqa: E731
    warm_load, cold = warm_and_cold(load, path)
    results["torch.save / torch.load"] = {
        STALL: seconds,
        COMMIT: seconds,
        WARM: warm_load,
        COLD: cold,
    }
    lazy = lambda: torch.load(path, mmap=True, weights_only=False)  # noqa: E731
    hashed = lambda: hash_tensors(torch.load(path, mmap=True, weights_only=False))  # noqa: E731
    warm_lazy, warm_hashed = warm(lazy), warm(hashed)
    drop_cache(path)
    cold_hashed = timed(hashed)
    results["torch.load(mmap=True), lazy"] = {WARM: warm_lazy}
    results["torch.load(mmap=True) + xxh3"] = {WARM: warm_hashed, COLD: cold_hashed}
    path.unlink()


def run_safetensors(
    state: dict[str, Any], root: Path, results: dict[str, dict[str, float]]
) -> None:
    from safetensors.torch import load_file, save_file

    path = root / "model.safetensors"
    flat = flat_tensors(state)

    def save() -> None:
        save_file(flat, str(path))
        fsync_path(path)

    seconds = timed(save)
    load = lambda: load_file(str(path))  # noqa: E731
    hashed = lambda: hash_tensors(load_file(str(path)))  # noqa: E731
    load()
    warm_load, warm_hashed = warm(load), warm(hashed)
    drop_cache(path)
    cold_hashed = timed(hashed)
    results["safetensors"] = {STALL: seconds, COMMIT: seconds, WARM: warm_load}
    results["safetensors + xxh3"] = {WARM: warm_hashed, COLD: cold_hashed}
    path.unlink()


def run_cloudpickle(
    state: dict[str, Any], root: Path, results: dict[str, dict[str, float]]
) -> None:
    import pickle

    import cloudpickle

    path = root / "state.pkl"

    def save() -> None:
        write_durably(path, lambda f: cloudpickle.dump(state, f))

    seconds = timed(save)

    def load() -> None:
        with open(path, "rb") as f:
            pickle.load(f)

    warm_load, cold = warm_and_cold(load, path)
    results["cloudpickle (1.0.0)"] = {STALL: seconds, COMMIT: seconds, WARM: warm_load, COLD: cold}
    path.unlink()


def run_dcp(state: dict[str, Any], root: Path, results: dict[str, dict[str, float]]) -> None:
    import torch.distributed.checkpoint as dcp

    directory = root / "dcp"
    flat = flat_tensors(state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        began = time.perf_counter()
        future = dcp.async_save(flat, checkpoint_id=str(directory))
        stall = time.perf_counter() - began
        future.result()
        commit = time.perf_counter() - began
        targets = {k: torch.empty_like(v) for k, v in flat.items()}
        load = lambda: dcp.load(targets, checkpoint_id=str(directory))  # noqa: E731
        warm_load, cold = warm_and_cold(load, directory)
    results["DCP async_save / load"] = {STALL: stall, COMMIT: commit, WARM: warm_load, COLD: cold}
    shutil.rmtree(directory, ignore_errors=True)


def run_orbax(state: dict[str, Any], root: Path, results: dict[str, dict[str, float]]) -> None:
    import orbax.checkpoint as ocp

    directory = root / "orbax" / f"s{time.monotonic_ns()}"
    tree = as_numpy(state)
    checkpointer = ocp.StandardCheckpointer()
    began = time.perf_counter()
    checkpointer.save(directory, tree)
    stall = time.perf_counter() - began
    checkpointer.wait_until_finished()
    commit = time.perf_counter() - began
    load = lambda: checkpointer.restore(directory)  # noqa: E731
    warm_load, cold = warm_and_cold(load, directory)
    checkpointer.close()
    results["Orbax (numpy)"] = {STALL: stall, COMMIT: commit, WARM: warm_load, COLD: cold}
    shutil.rmtree(root / "orbax", ignore_errors=True)


PEERS: dict[str, Callable[[dict[str, Any], Path, dict[str, dict[str, float]]], None]] = {
    "torch": run_torch,
    "safetensors": run_safetensors,
    "cloudpickle": run_cloudpickle,
    "dcp": run_dcp,
    "orbax": run_orbax,
}


def available_peers() -> tuple[list[str], dict[str, str]]:
    present, absent = [], {}
    modules = {
        "torch": "torch",
        "safetensors": "safetensors.torch",
        "cloudpickle": "cloudpickle",
        "dcp": "torch.distributed.checkpoint",
        "orbax": "orbax.checkpoint",
    }
    for peer, module in modules.items():
        try:
            __import__(module)
            present.append(peer)
        except Exception as exc:  # ImportError, or a broken install
            absent[peer] = f"{type(exc).__name__}: {exc}"
    return present, absent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default=OPTIONS["sizes"])
    parser.add_argument("--repeats", type=int, default=OPTIONS["repeats"])
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: temp)")
    parser.add_argument("--warm-inner", type=int, default=SETTINGS["warm_inner"])
    parser.add_argument("--peers", default=None, help="comma-separated peers (default: all)")
    args = parser.parse_args()
    SETTINGS["warm_inner"] = args.warm_inner
    sizes = [float(s) for s in args.sizes.split(",")]
    present, absent = available_peers()
    if args.peers is not None:
        present = [p for p in present if p in args.peers.split(",")]
    for peer, why in absent.items():
        print(f"absent: {peer} ({why})")
    root = Path(tempfile.mkdtemp(prefix="bench_sweep_", dir=args.dir))
    print(f"writing under {root} ({filesystem(root)})")
    sweep: list[dict[str, Any]] = []
    rows: list[tuple[str, list[float], str]] = []
    try:
        for size in sizes:
            state = sweep_state(size)
            size_bytes = nbytes_of(state)
            samples: dict[tuple[str, str], list[float]] = defaultdict(list)
            ours = Ours(root, state)
            try:
                for _ in range(args.repeats):
                    results: dict[str, dict[str, float]] = {FLOOR: run_floors(state, root)}
                    ours.run(state, results)
                    for peer in present:
                        PEERS[peer](state, root, results)
                        gc.collect()
                    for library, metrics in results.items():
                        for metric, seconds in metrics.items():
                            samples[(library, metric)].append(seconds)
            finally:
                ours.close()
                shutil.rmtree(root / "ours", ignore_errors=True)
            del state
            gc.collect()
            label = f"{size_bytes / 1e6:.0f} MB"
            for (library, metric), values in samples.items():
                if library.endswith(PAIRED):
                    continue
                paired = samples.get((library.split(" (")[0] + PAIRED, metric))
                floor = statistics.median(paired or samples[(FLOOR, metric)])
                median = statistics.median(values)
                sweep.append(
                    {
                        "size_bytes": size_bytes,
                        "metric": metric,
                        "library": library,
                        "median": median,
                        "min": min(values),
                        "max": max(values),
                        "samples": values,
                        "floor_median": floor,
                        "floor": "paired" if paired else "shared",
                        "ratio_to_floor": median / floor,
                    }
                )
                baseline = "" if library == FLOOR else f"{label} {metric}: {FLOOR}"
                if paired:
                    rows.append((f"{label} {metric}: floor paired with {library}", paired, ""))
                    baseline = f"{label} {metric}: floor paired with {library}"
                rows.append((f"{label} {metric}: {library}", values, baseline))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report(
        "bench_sweep",
        rows,
        {"options": vars(args) | {"dir": str(args.dir)}, "absent": absent, "sweep": sweep},
    )


if __name__ == "__main__":
    main()
