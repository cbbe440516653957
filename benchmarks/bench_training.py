"""Training throughput while checkpointing every 10 steps, against the same loop without.

    python benchmarks/bench_training.py [--steps 60] [--every 10] [--width 3240] [--repeats 2]

A 42 M-parameter MLP (4 layers of 3240x3240) trains with Adam on the CPU; its model and
optimizer state (about 500 MB) is saved every ``--every`` steps by alphatriangle, by PyTorch
DCP ``async_save``, by Orbax (``StandardCheckpointer``, async, the state handed over as numpy
arrays), by ``torch.save`` + fsync and by a synchronous cloudpickle + fsync (alphatriangle
1.0.0). A peer that is not installed is reported as absent. Each configuration runs
``--repeats`` times, interleaved, and the best run of each counts for the throughput kept
(the machine is shared and noisy); the table gives seconds per step (median, min, max), and
throughput kept is the inverse of the ratio.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _common import Seconds, report, write_durably

from alphatriangle.data import CheckpointManager, CheckpointManagerOptions, KeepLatest

OPTIONS = {"steps": 60, "every": 10, "width": 3240, "layers": 4, "batch": 64, "repeats": 2}

Saver = Callable[[int, dict[str, Any]], None]


def _train(
    *, steps: int, every: int, width: int, layers: int, batch: int, save: Saver | None
) -> float:
    torch.manual_seed(0)
    blocks: list[torch.nn.Module] = []
    for _ in range(layers):
        blocks += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    model = torch.nn.Sequential(*blocks)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    inputs = torch.randn(batch, width)

    def step() -> None:
        loss = model(inputs).square().mean()
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()

    for _ in range(2):  # warm-up: Adam allocates its state at the first step
        step()
    began = time.perf_counter()
    for i in range(1, steps + 1):
        step()
        if save is not None and i % every == 0:
            save(i, {"model": model.state_dict(), "optimizer": optimizer.state_dict()})
    return steps / (time.perf_counter() - began)


def main() -> None:  # noqa: PLR0915 - the peers' savers are closures over the run's directory
    # DCP warns at every save that torch.distributed is not initialised: one process is meant.
    warnings.filterwarnings("ignore", message="torch.distributed is disabled")
    parser = argparse.ArgumentParser(description=__doc__)
    for name, default in OPTIONS.items():
        parser.add_argument(f"--{name}", type=int, default=default)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_training_"))
    params = args.layers * (args.width * args.width + args.width)
    print(f"{params / 1e6:.1f} M parameters; saving every {args.every} steps under {root}")

    def run(saver_factory: Callable[[], tuple[Saver | None, Callable[[], None]]]) -> float:
        saver, finish = saver_factory()
        rate = _train(
            steps=args.steps,
            every=args.every,
            width=args.width,
            layers=args.layers,
            batch=args.batch,
            save=saver,
        )
        finish()
        return rate

    def none() -> tuple[Saver | None, Callable[[], None]]:
        return None, lambda: None

    def ours() -> tuple[Saver | None, Callable[[], None]]:
        directory = root / "ours"
        shutil.rmtree(directory, ignore_errors=True)
        manager = CheckpointManager(directory, CheckpointManagerOptions(retention=KeepLatest(2)))
        return (lambda step, state: manager.save(step, state) and None), manager.close

    def dcp() -> tuple[Saver | None, Callable[[], None]]:
        import torch.distributed.checkpoint as dist_cp

        pending: list[Any] = []

        def save(step: int, state: dict[str, Any]) -> None:
            if pending:
                pending.pop().result()  # DCP allows one save in flight, like max_pending=1
            pending.append(dist_cp.async_save(state, checkpoint_id=str(root / f"dcp{step}")))

        def finish() -> None:
            if pending:
                pending.pop().result()

        return save, finish

    def torch_save() -> tuple[Saver | None, Callable[[], None]]:
        def save(step: int, state: dict[str, Any]) -> None:
            write_durably(root / "torch_save.pt", lambda f: torch.save(state, f))

        return save, lambda: None

    def cloudpickle_save() -> tuple[Saver | None, Callable[[], None]]:
        import cloudpickle

        def save(step: int, state: dict[str, Any]) -> None:
            write_durably(
                root / "state.pkl", lambda f: cloudpickle.dump(state, f)
            )  # what alphatriangle 1.0.0 did

        return save, lambda: None

    def orbax() -> tuple[Saver | None, Callable[[], None]]:
        import orbax.checkpoint as ocp

        checkpointer = ocp.StandardCheckpointer()

        def numpy_tree(tree: Any) -> Any:
            if isinstance(tree, dict):
                return {str(k): numpy_tree(v) for k, v in tree.items()}
            if isinstance(tree, (list, tuple)):
                return {str(i): numpy_tree(v) for i, v in enumerate(tree)}
            return tree.numpy() if isinstance(tree, torch.Tensor) else tree

        def save(step: int, state: dict[str, Any]) -> None:
            checkpointer.save(root / f"orbax{step}", numpy_tree(state))

        def finish() -> None:
            checkpointer.wait_until_finished()
            checkpointer.close()

        return save, finish

    configs = {
        "no checkpoints": none,
        "alphatriangle": ours,
        "DCP async_save": dcp,
        "Orbax (numpy)": orbax,
        "torch.save": torch_save,
        "cloudpickle (1.0.0)": cloudpickle_save,
    }
    absent: dict[str, str] = {}
    for name, module in (
        ("Orbax (numpy)", "orbax.checkpoint"),
        ("DCP async_save", "torch.distributed.checkpoint"),
    ):
        try:
            __import__(module)
        except Exception as exc:  # ImportError, or a broken install
            absent[name] = f"{type(exc).__name__}: {exc}"
            del configs[name]
            print(f"absent: {name} ({absent[name]})")
    rates: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(args.repeats):
        for name, factory in configs.items():
            rates[name].append(run(factory))
            print(f"  {name:<16} {rates[name][-1]:.3f} steps/s")
            for leftover in [*root.glob("dcp*"), *root.glob("orbax*")]:
                shutil.rmtree(leftover, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    best = {name: max(values) for name, values in rates.items()}
    # Report seconds per step so that ratios read as slowdowns; throughput kept = 1 / ratio.
    rows: list[tuple[str, Seconds, str]] = [
        (f"{name} (s/step)", [1.0 / r for r in rates[name]], "no checkpoints (s/step)")
        for name in configs
    ]
    rows[0] = (rows[0][0], rows[0][1], "")
    report(
        "bench_training",
        rows,
        {
            "parameters": params,
            "every": args.every,
            "steps": args.steps,
            "throughput_kept": {name: best[name] / best["no checkpoints"] for name in configs},
            "absent": absent,
        },
    )
    for name in configs:
        print(f"throughput kept, {name}: {best[name] / best['no checkpoints']:.0%}")


if __name__ == "__main__":
    main()
