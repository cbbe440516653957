from __future__ import annotations

import numpy as np
import pytest

from alphatriangle.config import EnvConfig, ModelConfig
from alphatriangle.env import SHAPES, TriangleGame, feature_dim


def _game(seed: int = 0, **env: int) -> TriangleGame:
    return TriangleGame(EnvConfig(**env), np.random.default_rng(seed))


def _action(game: TriangleGame, slot: int, row: int, col: int) -> int:
    rows, cols = game.filled.shape
    return slot * rows * cols + row * cols + col


def test_state_has_the_1_0_0_shapes() -> None:
    game = _game()
    state = game.state()
    assert state["grid"].shape == (ModelConfig().GRID_INPUT_CHANNELS, 8, 15)
    assert state["other_features"].shape == (ModelConfig().OTHER_NN_INPUT_FEATURES_DIM,)
    assert feature_dim(EnvConfig()) == 30
    assert game.valid_mask().shape == (EnvConfig().ACTION_DIM,)


def test_orientation_decides_where_a_shape_fits() -> None:
    game = _game()
    game.slots = [0, 1, 7]  # up, down, big-up
    game._valid = None
    assert game.valid_mask()[_action(game, 0, 0, 0)]  # (0, 0) points up
    assert not game.valid_mask()[_action(game, 0, 0, 1)]
    assert game.valid_mask()[_action(game, 1, 0, 1)]  # (0, 1) points down
    # The big triangle needs the row below, one cell either side of its anchor.
    assert not game.valid_mask()[_action(game, 2, 0, 0)]
    assert game.valid_mask()[_action(game, 2, 0, 2)]
    assert not game.valid_mask()[_action(game, 2, 7, 2)]


def test_placing_fills_cells_rewards_and_refuses_overlap() -> None:
    game = _game()
    game.slots = [4, 0, 0]  # bar-up, up, up
    game._valid = None
    reward = game.step(_action(game, 0, 2, 4))
    assert reward == pytest.approx(0.3)
    assert game.filled[2, 4:7].all() and game.filled.sum() == 3
    with pytest.raises(ValueError, match="not legal"):
        game.step(_action(game, 1, 2, 4))  # occupied
    with pytest.raises(ValueError, match="not legal"):
        game.step(_action(game, 0, 0, 0))  # the slot is used


def test_a_full_row_is_cleared_and_scores() -> None:
    game = _game()
    game.filled[3, :] = True
    game.filled[3, 0] = False  # (3, 0) points down
    game.slots = [1, None, None]
    game._valid = None
    reward = game.step(_action(game, 0, 3, 0))
    assert reward == pytest.approx(1.1)
    assert not game.filled.any()
    assert all(slot is not None for slot in game.slots)  # every slot used: refilled


def test_copy_is_independent_and_a_game_ends() -> None:
    game = _game(seed=3)
    twin = game.copy()
    twin.step(int(twin.valid_actions()[0]))
    assert game.moves == 0 and not game.filled.any()
    rng = np.random.default_rng(0)
    while not game.is_over():
        game.step(int(rng.choice(game.valid_actions())))
        assert game.moves < 10_000
    assert game.valid_actions().size == 0 and game.score > 0


def test_every_shape_is_connected_and_keeps_orientation() -> None:
    for shape in SHAPES:
        assert shape.offsets[0] == (0, 0)
        cells = set(shape.offsets)
        assert len(cells) == len(shape.offsets)
