from __future__ import annotations

import numpy as np
import pytest

from alphatriangle.config import EnvConfig, ModelConfig
from alphatriangle.env import SHAPES, TriangleGame, check_grid_channels, feature_dim

# Every cell playable: the shapes' geometry without 1.0.0's dead corners.
OPEN = {"PLAYABLE_RANGE_PER_ROW": [(0, 15)] * 8}


def _game(seed: int = 0, channels: int = 1, **env: object) -> TriangleGame:
    return TriangleGame(EnvConfig(**env), np.random.default_rng(seed), grid_channels=channels)


def _action(game: TriangleGame, slot: int, row: int, col: int) -> int:
    rows, cols = game.filled.shape
    return slot * rows * cols + row * cols + col


def test_state_has_the_1_0_0_shapes_and_encoding() -> None:
    game = _game()
    state = game.state()
    assert state["grid"].shape == (ModelConfig().GRID_INPUT_CHANNELS, 8, 15) == (1, 8, 15)
    assert state["other_features"].shape == (ModelConfig().OTHER_NN_INPUT_FEATURES_DIM,)
    assert feature_dim(EnvConfig()) == 30
    assert game.valid_mask().shape == (EnvConfig().ACTION_DIM,)
    # 1.0.0's channel: -1 on the dead cells outside PLAYABLE_RANGE_PER_ROW, 0 empty, 1 filled.
    grid = state["grid"][0]
    assert (grid == -1).sum() == 120 - sum(
        end - start for start, end in EnvConfig().PLAYABLE_RANGE_PER_ROW
    )
    assert grid[0, 3] == 0 and grid[0, 2] == -1 and grid[3, 0] == 0
    game.slots = [1, None, None]  # down: (3, 0) points down
    game._valid = None
    game.step(_action(game, 0, 3, 0))
    assert game.state()["grid"][0, 3, 0] == 1.0


def test_the_game_gives_the_channels_the_model_asks_for() -> None:
    two = _game(channels=2).state()["grid"]
    assert two.shape == (2, 8, 15)
    assert two[1].sum() == 60 and two[1, 0, 0] == 1  # orientation: (0, 0) points up
    with pytest.raises(ValueError, match="GRID_INPUT_CHANNELS is 3"):
        check_grid_channels(3)
    with pytest.raises(ValueError, match="GRID_INPUT_CHANNELS is 0"):
        _game(channels=0)


def test_dead_cells_take_no_shape() -> None:
    game = _game()
    game.slots = [0, 1, 0]
    game._valid = None
    mask = game.valid_mask()
    assert not mask[_action(game, 0, 0, 0)]  # (0, 0) is dead in 1.0.0's default grid
    assert mask[_action(game, 0, 0, 4)]  # (0, 4): playable, points up
    legal_cells = {int(a) % 120 for a in game.valid_actions()}
    dead = np.flatnonzero(game.dead.reshape(-1))
    assert legal_cells.isdisjoint(dead.tolist())


def test_orientation_decides_where_a_shape_fits() -> None:
    game = _game(**OPEN)
    game.slots = [0, 1, 7]  # up, down, big-up
    game._valid = None
    assert game.valid_mask()[_action(game, 0, 0, 0)]  # (0, 0) points up
    assert not game.valid_mask()[_action(game, 0, 0, 1)]
    assert game.valid_mask()[_action(game, 1, 0, 1)]  # (0, 1) points down
    # The big triangle needs the row below, one cell either side of its anchor.
    assert not game.valid_mask()[_action(game, 2, 0, 0)]
    assert game.valid_mask()[_action(game, 2, 0, 2)]
    assert not game.valid_mask()[_action(game, 2, 7, 2)]


def test_placing_fills_cells_rewards_as_1_0_0_and_refuses_overlap() -> None:
    env = EnvConfig()
    game = _game()
    game.slots = [4, 0, 0]  # bar-up, up, up
    game._valid = None
    reward = game.step(_action(game, 0, 2, 4))
    assert reward == pytest.approx(3 * env.REWARD_PER_PLACED_TRIANGLE + env.REWARD_PER_STEP_ALIVE)
    assert game.filled[2, 4:7].all() and game.filled.sum() == 3
    with pytest.raises(ValueError, match="not legal"):
        game.step(_action(game, 1, 2, 4))  # occupied
    with pytest.raises(ValueError, match="not legal"):
        game.step(_action(game, 0, 0, 0))  # the slot is used


def test_a_row_of_filled_playable_cells_is_cleared_and_scores() -> None:
    env = EnvConfig(REWARD_PER_CLEARED_TRIANGLE=1.0)
    game = TriangleGame(env, np.random.default_rng(0))
    game.filled[0, 3:12] = True  # row 0: columns 3..11 playable
    game.filled[0, 4] = False  # (0, 4) points up
    game.slots = [0, None, None]
    game._valid = None
    reward = game.step(_action(game, 0, 0, 4))
    assert reward == pytest.approx(0.01 + 9 * 1.0 + 0.005)
    assert not game.filled.any()
    assert all(slot is not None for slot in game.slots)  # every slot used: refilled


def test_the_move_that_ends_the_game_is_penalised() -> None:
    game = _game(seed=3)
    twin = game.copy()
    twin.step(int(twin.valid_actions()[0]))
    assert game.moves == 0 and not game.filled.any()
    rng = np.random.default_rng(0)
    rewards = []
    while not game.is_over():
        rewards.append(game.step(int(rng.choice(game.valid_actions()))))
        assert game.moves < 10_000
    assert game.valid_actions().size == 0
    assert rewards[-1] < EnvConfig().PENALTY_GAME_OVER + 5
    assert all(r > 0 for r in rewards[:-1])
    assert game.score == pytest.approx(sum(rewards))


def test_every_shape_is_connected_and_keeps_orientation() -> None:
    for shape in SHAPES:
        assert shape.offsets[0] == (0, 0)
        cells = set(shape.offsets)
        assert len(cells) == len(shape.offsets)
