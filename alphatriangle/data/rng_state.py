"""The random number generators a training step depends on: captured for a checkpoint and
put back on resume.

Captured: Python's ``random``, NumPy's global generator, torch's CPU generator and every CUDA
device's (none without CUDA). Putting a state back sets each of them, so that a resumed run
draws the numbers an unbroken one would; the CUDA states are skipped on a machine without
CUDA. Cost: a few kilobytes per generator, copied.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["capture_rng_state", "restore_rng_state"]


def capture_rng_state() -> dict[str, Any]:
    """The RNG states of Python, NumPy (global), torch CPU and every CUDA device."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Set every generator :func:`capture_rng_state` captured (CUDA's when CUDA is here)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("torch_cuda") or []
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
