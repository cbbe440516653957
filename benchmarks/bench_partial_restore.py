"""Partial restore: the model alone out of a model-plus-Adam state, against a full restore.

    python benchmarks/bench_partial_restore.py [--mb 450] [--layers 30] [--repeats 7]

The state is a model state dict and an Adam optimizer state dict (two moments per
parameter): the model is a third of the bytes. Both restores verify what they read and find
the step in the page cache (a warm-up read precedes the timings).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import report, timed

from alphatriangle.data import CheckpointManager, CheckpointManagerOptions

OPTIONS = {"mb": 450.0, "layers": 30, "repeats": 7}


def _state(megabytes: float, layers: int) -> dict[str, Any]:
    per_layer = int(megabytes * 1e6 / 3 / 4 / layers)
    generator = torch.Generator().manual_seed(0)
    model = OrderedDict(
        (f"layer{i}.weight", torch.randn(per_layer, generator=generator)) for i in range(layers)
    )
    optimizer = {
        "state": {
            i: {
                "step": torch.tensor(10.0),
                "exp_avg": torch.randn(per_layer, generator=generator),
                "exp_avg_sq": torch.rand(per_layer, generator=generator),
            }
            for i in range(layers)
        },
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": list(range(layers))}],
    }
    return {"model": model, "optimizer": optimizer, "step": 10}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=float, default=OPTIONS["mb"])
    parser.add_argument("--layers", type=int, default=OPTIONS["layers"])
    parser.add_argument("--repeats", type=int, default=OPTIONS["repeats"])
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_partial_"))
    with CheckpointManager(root) as manager:
        manager.save(0, _state(args.mb, args.layers))
    full_times, partial_times = [], []
    with CheckpointManager(root, CheckpointManagerOptions(read_only=True)) as reader:
        reader.restore()  # warm the page cache
        for _ in range(args.repeats):
            full_times.append(timed(reader.restore))
            partial_times.append(timed(lambda: reader.restore(select=["model"])))
    shutil.rmtree(root, ignore_errors=True)
    rows = [
        ("full restore (verified)", float(np.median(full_times)), ""),
        (
            "restore(select=['model']) (verified)",
            float(np.median(partial_times)),
            "full restore (verified)",
        ),
    ]
    report(
        "bench_partial_restore",
        rows,
        {
            "state_mb": args.mb,
            "repeats": args.repeats,
            "min_max": {
                "full": [min(full_times), max(full_times)],
                "partial": [min(partial_times), max(partial_times)],
            },
        },
    )


if __name__ == "__main__":
    main()
