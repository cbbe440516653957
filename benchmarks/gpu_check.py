"""The checks that need a GPU, in one short run (``nox -s bench -- benchmarks/gpu_check.py``):

    python benchmarks/gpu_check.py [--stall-gib 0.25,4] [--repeats 3] [--steps 100]

1. the CUDA tests (``pytest -m cuda``);
2. save stall against a pinned device-to-host copy of the same bytes (256 MB and 4 GiB),
   and save -> committed;
3. restore of a 1.6 GB model + Adam state to CUDA: this project (mapped and streamed through
   pinned chunks; and ``restore_mode="copy"``) against ``torch.load(mmap=True)`` then
   ``.cuda()``, safetensors ``load_file(device="cuda")``, ``torch.load(map_location="cuda")``,
   DCP ``load`` into preallocated CUDA tensors, and the pinned host-to-device copy (floor);
4. a GPU training loop (an MLP of 8 layers of 4096 with Adam: 1.6 GB of state) saved every
   25 steps over ``--steps`` steps: throughput without checkpointing, with this project
   (the wait for the last write included, and without it), DCP ``async_save`` and
   ``torch.save``.

``--device cpu`` runs the same code on the CPU with small sizes (a smoke test of the script,
no figure to keep). Without a CUDA device and without ``--device cpu`` it says so and exits 0.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _common import report, write_durably

from alphatriangle.data import CheckpointManager, CheckpointManagerOptions, KeepLatest

OPTIONS = {"stall_gib": "0.25,4", "repeats": 3, "steps": 100, "every": 25, "width": 4096}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _state_of(gib: float, leaves: int, device: torch.device) -> dict[str, torch.Tensor]:
    per_leaf = max(1, int(gib * (1 << 30) / 4 / leaves))
    return {f"leaf{i:03d}": torch.randn(per_leaf, device=device) for i in range(leaves)}


def _pinned_copy(state: dict[str, torch.Tensor], device: torch.device) -> float:
    """The stall floor: the same tensors copied into preallocated pinned memory, one sync."""
    pin = device.type == "cuda"
    targets = {k: torch.empty(v.shape, dtype=v.dtype, pin_memory=pin) for k, v in state.items()}
    for key, value in state.items():  # first touch
        targets[key].copy_(value, non_blocking=pin)
    _sync(device)
    began = time.perf_counter()
    for key, value in state.items():
        targets[key].copy_(value, non_blocking=pin)
    _sync(device)
    return time.perf_counter() - began


def check_stall(sizes: list[float], repeats: int, device: torch.device, root: Path) -> list[Any]:
    rows: list[Any] = []
    for gib in sizes:
        state = _state_of(gib, 122, device)
        floors, stalls, commits = [], [], []
        options = CheckpointManagerOptions(retention=KeepLatest(1))
        with CheckpointManager(root / f"stall_{gib}", options) as manager:
            manager.save(0, state)  # allocates the pinned staging buffer once
            manager.wait_until_finished()
            for step in range(1, repeats + 1):
                floors.append(_pinned_copy(state, device))
                began = time.perf_counter()
                handle = manager.save(step, state)
                stalls.append(time.perf_counter() - began)
                assert handle is not None
                handle.result()
                commits.append(time.perf_counter() - began)
            restored = manager.restore()
            assert all(torch.equal(restored[k], v) for k, v in state.items())
        label = f"{gib:g} GiB"
        floor = f"{label} pinned device-to-host copy (floor)"
        rows += [
            (floor, floors, ""),
            (f"{label} alphatriangle save() stall", stalls, floor),
            (f"{label} alphatriangle save -> committed", commits, ""),
        ]
        del state, restored
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _mlp(width: int, device: torch.device) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for _ in range(8):
        layers += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    return model, optimizer


def _train_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: torch.Tensor
) -> None:
    loss = model(batch).square().mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def check_restore(width: int, repeats: int, device: torch.device, root: Path) -> list[Any]:
    """Restore of the MLP's model + Adam state (1.6 GB at width 4096) to ``device``."""
    model, optimizer = _mlp(width, device)
    _train_step(model, optimizer, torch.randn(64, width, device=device))  # Adam state exists
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
    flat = {f"model.{k}": v for k, v in state["model"].items()}
    for index, entry in state["optimizer"]["state"].items():
        for key, value in entry.items():
            flat[f"optimizer.{index}.{key}"] = value
    times: dict[str, list[float]] = {}

    def measure(name: str, fn: Callable[[], object]) -> None:
        fn()  # warm: page cache, allocator
        gc.collect()
        for _ in range(repeats):
            began = time.perf_counter()
            fn()
            _sync(device)
            times.setdefault(name, []).append(time.perf_counter() - began)
            gc.collect()

    with CheckpointManager(root / "restore") as manager:
        manager.save(0, state)
        manager.wait_until_finished()
    mapped = CheckpointManager(root / "restore", CheckpointManagerOptions(read_only=True))
    copying = CheckpointManager(
        root / "restore", CheckpointManagerOptions(read_only=True, restore_mode="copy")
    )
    measure(
        "alphatriangle restore (mapped, streamed)", lambda: mapped.restore(0, map_location=device)
    )
    measure(
        "alphatriangle restore (restore_mode=copy)", lambda: copying.restore(0, map_location=device)
    )
    restored = mapped.restore(0, map_location=device)
    assert all(torch.equal(restored["model"][k], v) for k, v in state["model"].items())
    mapped.close()
    copying.close()
    cpu_flat = {k: v.cpu() for k, v in flat.items()}
    torch_path = root / "state.pt"
    torch.save(cpu_flat, torch_path)
    measure(
        "torch.load(mmap=True) + .to(device)",
        lambda: {k: v.to(device) for k, v in torch.load(torch_path, mmap=True).items()},
    )
    measure("torch.load(map_location=device)", lambda: torch.load(torch_path, map_location=device))
    try:
        from safetensors.torch import load_file, save_file

        save_file(cpu_flat, str(root / "state.safetensors"))
        measure(
            "safetensors load_file(device)",
            lambda: load_file(str(root / "state.safetensors"), device=str(device)),
        )
    except ImportError as exc:
        print(f"absent: safetensors ({exc})")
    try:
        import torch.distributed.checkpoint as dcp

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp.save(cpu_flat, checkpoint_id=str(root / "dcp"))
            targets = {k: torch.empty_like(v) for k, v in flat.items()}
            measure(
                "DCP load into preallocated tensors",
                lambda: dcp.load(targets, checkpoint_id=str(root / "dcp")),
            )
    except ImportError as exc:
        print(f"absent: DCP ({exc})")
    pin = device.type == "cuda"
    pinned = {k: v.pin_memory() if pin else v.clone() for k, v in cpu_flat.items()}
    measure(
        "pinned host-to-device copy (floor)",
        lambda: {k: v.to(device, non_blocking=pin) for k, v in pinned.items()},
    )
    floor = "pinned host-to-device copy (floor)"
    return [(name, values, "" if name == floor else floor) for name, values in times.items()]


def check_training(
    width: int, steps: int, every: int, device: torch.device, root: Path
) -> tuple[list[Any], dict[str, float]]:
    """Seconds per training step with each way of saving every ``every`` steps."""
    batch = torch.randn(256, width, device=device)

    def loop(
        save: Callable[[int, dict[str, Any]], Callable[[], None] | None] | None,
    ) -> tuple[float, float]:
        model, optimizer = _mlp(width, device)
        for _ in range(3):  # warm-up: kernels, Adam state
            _train_step(model, optimizer, batch)
        _sync(device)
        finish: Callable[[], None] | None = None
        began = time.perf_counter()
        for step in range(1, steps + 1):
            _train_step(model, optimizer, batch)
            if save is not None and step % every == 0:
                finish = (
                    save(step, {"model": model.state_dict(), "optimizer": optimizer.state_dict()})
                    or finish
                )
        _sync(device)
        loop_end = time.perf_counter()
        if finish is not None:
            finish()
        return (time.perf_counter() - began) / steps, (loop_end - began) / steps

    results: dict[str, tuple[float, float]] = {"no checkpointing": loop(None)}
    options = CheckpointManagerOptions(retention=KeepLatest(2))
    with CheckpointManager(root / "train_ours", options) as manager:

        def ours(step: int, state: dict[str, Any]) -> Callable[[], None]:
            manager.save(step, state)
            return manager.wait_until_finished

        results["alphatriangle"] = loop(ours)
    try:
        import torch.distributed.checkpoint as dcp

        pending: list[Any] = []

        def dcp_save(step: int, state: dict[str, Any]) -> Callable[[], None]:
            if pending:
                pending.pop().result()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pending.append(dcp.async_save(state, checkpoint_id=str(root / f"dcp_{step}")))
            return lambda: pending[-1].result() if pending else None

        results["DCP async_save"] = loop(dcp_save)
    except ImportError as exc:
        print(f"absent: DCP ({exc})")

    def torch_save(step: int, state: dict[str, Any]) -> None:
        write_durably(root / "train.pt", lambda f: torch.save(state, f))

    results["torch.save + fsync"] = loop(torch_save)
    base = results["no checkpointing"][0]
    rows = [
        (f"seconds per step: {name}", [total], "seconds per step: no checkpointing")
        for name, (total, _) in results.items()
    ]
    rows[0] = (rows[0][0], rows[0][1], "")
    kept = {name: base / total for name, (total, _) in results.items()}
    kept["alphatriangle, without the final wait"] = base / results["alphatriangle"][1]
    return rows, kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name, default in OPTIONS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check here")
        return
    small = device.type == "cpu"
    code = 0
    if not small:
        tests = (
            Path(__file__).resolve().parents[1] / "tests" / "data" / "checkpoint" / "test_cuda.py"
        )
        code = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-m", "cuda", str(tests)], check=False
        ).returncode
    sizes = [0.01] if small else [float(s) for s in args.stall_gib.split(",")]
    width = 256 if small else args.width
    steps = 10 if small else args.steps
    every = 5 if small else args.every
    root = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    try:
        rows = check_stall(sizes, args.repeats, device, root)
        rows += check_restore(width, args.repeats, device, root)
        training_rows, kept = check_training(width, steps, every, device, root)
        rows += training_rows
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report(
        "gpu_check" if not small else "gpu_check_cpu_smoke",
        rows,
        {"options": vars(args), "throughput_kept": kept, "cuda_tests_exit_code": code},
    )
    for name, value in kept.items():
        print(f"throughput kept, {name}: {value:.1%}")
    sys.exit(code)


if __name__ == "__main__":
    main()
