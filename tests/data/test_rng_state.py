"""Capturing and putting back the random generators a training step draws from."""

from __future__ import annotations

import random

import numpy as np
import torch

from alphatriangle.data.rng_state import capture_rng_state, restore_rng_state


def _draw() -> tuple[float, float, float]:
    return random.random(), float(np.random.random()), float(torch.rand(1))


def test_a_restored_state_draws_the_same_numbers_again() -> None:
    state = capture_rng_state()
    expected = [_draw() for _ in range(3)]
    restore_rng_state(state)
    assert [_draw() for _ in range(3)] == expected
    assert state["torch_cuda"] == [] or torch.cuda.is_available()


def test_a_state_without_cuda_generators_restores_the_others() -> None:
    state = {**capture_rng_state(), "torch_cuda": []}
    expected = _draw()
    restore_rng_state(state)
    assert _draw() == expected
