"""A small training loop with async checkpointing: the main job until the reference trainer
lands. It resumes from the newest checkpoint when one exists, so running it twice continues
the same run."""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import numpy as np
import torch

from alphatriangle.data import CheckpointManager, CheckpointManagerOptions, KeepBest, KeepLatest

logger = logging.getLogger(__name__)

SAVE_EVERY = 20


def _rng_state() -> dict[str, object]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }


def _set_rng_state(state: dict[str, object]) -> None:
    random.setstate(state["python"])  # type: ignore[arg-type]
    np.random.set_state(state["numpy"])  # type: ignore[arg-type]
    torch.set_rng_state(state["torch"])  # type: ignore[arg-type]


def run_demo(directory: Path, steps: int) -> None:
    """Train a small network for ``steps`` steps, checkpointing every 20 and keeping the
    3 newest and the best by loss; print what was saved and restored."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    inputs = torch.randn(4096, 64)
    targets = inputs.sum(dim=1, keepdim=True).sin()
    options = CheckpointManagerOptions(
        save_interval_steps=SAVE_EVERY,
        retention=KeepLatest(3) | KeepBest(1, metric="loss", mode="min"),
    )
    with CheckpointManager(directory, options) as manager:
        start = 0
        if manager.latest_step() is not None:
            state = manager.restore()
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            _set_rng_state(state["rng"])
            start = state["step"]
            print(f"resumed from step {start} in {directory}")
        began = time.perf_counter()
        for step in range(start + 1, start + steps + 1):
            batch = torch.randint(0, len(inputs), (256,))
            loss = torch.nn.functional.mse_loss(model(inputs[batch]), targets[batch])
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]  # unannotated in torch
            optimizer.step()
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": _rng_state(),
                "step": step,
            }
            handle = manager.save(step, state, metrics={"loss": loss.item()})
        if handle is None:  # the final state is always kept
            manager.save(step, state, metrics={"loss": loss.item()}, force=True)
        manager.wait_until_finished()
        elapsed = time.perf_counter() - began
        print(f"trained {steps} steps in {elapsed:.2f} s; kept steps {manager.all_steps()}")
        print(f"best step by loss: {manager.best_step()}")
        restored = manager.restore()
        same = all(torch.equal(restored["model"][k], v) for k, v in model.state_dict().items())
        print(f"newest step {manager.latest_step()} restores the live weights exactly: {same}")
