"""Shared by the benchmark scripts: timing, the reference state, the results table."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results"


def reference_state(total_mb: float, leaves: int, *, device: str = "cpu") -> dict[str, Any]:
    """``leaves`` float32 leaves totalling ``total_mb`` MB: half tensors, half numpy arrays."""
    per_leaf = int(total_mb * 1e6 / 4 / leaves)
    generator = torch.Generator().manual_seed(0)
    state: dict[str, Any] = {}
    for i in range(leaves):
        tensor = torch.randn(per_leaf, generator=generator)
        state[f"leaf{i:03d}"] = tensor.to(device) if i % 2 == 0 else tensor.numpy()
    return state


def state_bytes(state: dict[str, Any]) -> int:
    return sum(v.nbytes if isinstance(v, np.ndarray) else v.numel() * 4 for v in state.values())


def timed(fn: Callable[[], object]) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def report(name: str, rows: list[tuple[str, float, str]], extra: dict[str, Any]) -> None:
    """Print ``rows`` (label, seconds, baseline label) as a table of ratios; write JSON."""
    values = {label: seconds for label, seconds, _ in rows}
    print(f"\n{name}")
    print(f"{'measure':<44} {'seconds':>9} {'ratio':>7}  baseline")
    out = []
    for label, seconds, baseline in rows:
        ratio = seconds / values[baseline] if baseline else float("nan")
        print(f"{label:<44} {seconds:9.4f} {ratio:7.2f}  {baseline or '-'}")
        out.append({"measure": label, "seconds": seconds, "baseline": baseline, "ratio": ratio})
    RESULTS.mkdir(exist_ok=True)
    payload = {"benchmark": name, "machine": machine(), "rows": out, **extra}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2))
