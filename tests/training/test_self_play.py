from __future__ import annotations

import numpy as np
import pytest
import torch

from alphatriangle.config import EnvConfig, MCTSConfig, RunConfigs, TrainConfig
from alphatriangle.env import TriangleGame
from alphatriangle.nn import NeuralNetwork
from alphatriangle.rl.core import ExperienceBuffer
from alphatriangle.training import Learner, play_game, run_search
from alphatriangle.training.presets import preset_path

QUICK = RunConfigs.build(preset=preset_path("quick"))


@pytest.fixture
def network() -> NeuralNetwork:
    torch.manual_seed(0)
    return NeuralNetwork(QUICK.model, EnvConfig(), TrainConfig(), device="cpu")


def test_search_visits_only_legal_actions(network: NeuralNetwork) -> None:
    game = TriangleGame(EnvConfig(), np.random.default_rng(0))
    before = game.filled.copy()
    config = MCTSConfig(NUM_SIMULATIONS=24)
    result = run_search(game, network, config, np.random.default_rng(1))
    assert result.visits.sum() == 24
    assert set(result.actions.tolist()) == set(game.valid_actions().tolist())
    assert np.array_equal(game.filled, before)  # the search plays on copies


def test_a_game_gives_honest_experiences(network: NeuralNetwork) -> None:
    env, mcts = EnvConfig(), MCTSConfig(NUM_SIMULATIONS=4, MAX_GAME_MOVES=25, DISCOUNT=0.9)
    result = play_game(network, env, mcts, np.random.default_rng(2))
    batch = result.experiences
    moves = result.moves
    assert 0 < moves <= 25 and result.simulations == 4 * moves
    assert batch["grid"].shape == (moves, 1, 8, 15) and batch["grid"].dtype == np.float32
    assert batch["other_features"].shape == (moves, 30)
    assert batch["policy_target"].shape == (moves, env.ACTION_DIM)
    np.testing.assert_allclose(batch["policy_target"].sum(axis=1), 1.0, rtol=1e-5)
    # Returns are discounted rewards: r_t = R_t - 0.9 R_{t+1}, each at least one triangle
    # placed and a step alive (1.0.0's rewards), but the last when it ended the game.
    returns = batch["value_target"]
    rewards = returns - 0.9 * np.append(returns[1:], 0.0)
    assert np.all(rewards[:-1] >= env.REWARD_PER_PLACED_TRIANGLE + env.REWARD_PER_STEP_ALIVE - 1e-9)
    assert rewards.sum() == pytest.approx(result.score)
    # The first state is an empty grid: 1.0.0's one channel, -1 on the dead cells.
    assert set(np.unique(batch["grid"][0, 0]).tolist()) == {-1.0, 0.0}
    network_2 = _two_channel()
    two = play_game(network_2, env, mcts, np.random.default_rng(2), grid_channels=2)
    assert two.experiences["grid"].shape[1:] == (2, 8, 15)


def _two_channel() -> NeuralNetwork:
    model = QUICK.model.model_copy(update={"GRID_INPUT_CHANNELS": 2})
    return NeuralNetwork(model, EnvConfig(), TrainConfig(), device="cpu")


def test_learner_fits_a_batch_and_feeds_priorities(network: NeuralNetwork) -> None:
    train = TrainConfig(MIN_BUFFER_SIZE_TO_TRAIN=16, BATCH_SIZE=16, BUFFER_CAPACITY=512)
    buffer = ExperienceBuffer(train, EnvConfig(), QUICK.model)
    mcts = MCTSConfig(NUM_SIMULATIONS=2, MAX_GAME_MOVES=20)
    rng = np.random.default_rng(3)
    while not buffer.is_ready():
        buffer.add_batch(play_game(network, EnvConfig(), mcts, rng).experiences)
    learner = Learner(network, train)
    sample = buffer.sample(16, current_train_step=0)
    assert sample is not None
    first, errors = learner.train_step(sample)
    for _ in range(30):
        last, errors = learner.train_step(sample)
    assert last["loss"] < first["loss"]
    assert errors.shape == (16,) and np.all(np.isfinite(errors))
    before = buffer.tree.leaves()[sample["indices"]].copy()
    buffer.update_priorities(sample["indices"], errors)
    assert not np.allclose(buffer.tree.leaves()[sample["indices"]], before)
