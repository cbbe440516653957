"""Self-play: one game played with the search, turned into experiences of the 1.0.0 shapes.

:func:`play_game` is plain Python (tested without Ray); :func:`start_workers` makes
``NUM_SELF_PLAY_WORKERS`` Ray actors that play games with the newest weights they were sent
(``ray`` is imported there, and only there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from alphatriangle.config import EnvConfig, MCTSConfig, ModelConfig, RunConfigs, TrainConfig
from alphatriangle.env import TriangleGame
from alphatriangle.nn import NeuralNetwork
from alphatriangle.training.search import run_search
from alphatriangle.utils.types import ColumnarBatch

__all__ = ["GameResult", "SelfPlayWorker", "play_game", "start_workers"]


@dataclass(frozen=True)
class GameResult:
    """One finished game: its experiences (one per move, columnar), score, moves, the
    simulations run and the version of the weights that played it."""

    experiences: ColumnarBatch
    score: float
    moves: int
    simulations: int
    weights_version: int


def _temperature_choice(
    visits: np.ndarray[Any, Any], temperature: float, rng: np.random.Generator
) -> int:
    if temperature <= 0 or visits.sum() == 0:
        return int(np.argmax(visits))
    scaled = np.power(visits / visits.max(), 1.0 / temperature)
    return int(rng.choice(len(visits), p=scaled / scaled.sum()))


def play_game(
    network: Any,
    env_config: EnvConfig,
    mcts_config: MCTSConfig,
    rng: np.random.Generator,
    weights_version: int = 0,
    *,
    grid_channels: int = 1,
) -> GameResult:
    """Play one game; each move's experience is its state (``grid_channels`` grid channels:
    ``ModelConfig.GRID_INPUT_CHANNELS``), the root's visit distribution (the policy target,
    dense over ``ACTION_DIM``) and the discounted return that followed (the value target)."""
    game = TriangleGame(env_config, rng, grid_channels=grid_channels)
    grids, others, policies, rewards = [], [], [], []
    simulations = 0
    while not game.is_over() and game.moves < mcts_config.MAX_GAME_MOVES:
        result = run_search(game, network, mcts_config, rng)
        simulations += result.simulations
        state = game.state()
        policy = np.zeros(env_config.ACTION_DIM, dtype=np.float32)
        policy[result.actions] = result.visits / result.visits.sum()
        temperature = (
            mcts_config.TEMPERATURE_INITIAL
            if game.moves < mcts_config.TEMPERATURE_MOVES
            else mcts_config.TEMPERATURE_FINAL
        )
        action = int(result.actions[_temperature_choice(result.visits, temperature, rng)])
        grids.append(state["grid"])
        others.append(state["other_features"])
        policies.append(policy)
        rewards.append(game.step(action))
    returns = np.zeros(len(rewards), dtype=np.float64)
    running = 0.0
    for index in range(len(rewards) - 1, -1, -1):
        running = rewards[index] + mcts_config.DISCOUNT * running
        returns[index] = running
    shapes = game.state()  # the columns' shapes, when the game ended before a move
    experiences = ColumnarBatch(
        grid=np.stack(grids) if grids else np.zeros((0, *shapes["grid"].shape), np.float32),
        other_features=np.stack(others)
        if others
        else np.zeros((0, *shapes["other_features"].shape), np.float32),
        policy_target=np.stack(policies)
        if policies
        else np.zeros((0, env_config.ACTION_DIM), np.float32),
        value_target=returns,
    )
    return GameResult(experiences, game.score, game.moves, simulations, weights_version)


class SelfPlayWorker:
    """Plays games on the CPU with one thread, with the newest weights it was sent."""

    def __init__(
        self,
        env_config: EnvConfig,
        model_config: ModelConfig,
        train_config: TrainConfig,
        mcts_config: MCTSConfig,
        seed: int,
    ) -> None:
        torch.set_num_threads(1)
        torch.manual_seed(seed)
        self.env_config, self.mcts_config = env_config, mcts_config
        self.grid_channels = model_config.GRID_INPUT_CHANNELS
        self.network = NeuralNetwork(model_config, env_config, train_config, device="cpu")
        self.network.model.eval()
        self.rng = np.random.default_rng(seed)
        self.weights_version = -1

    def play(self, weights: list[Any], weights_version: int) -> GameResult:
        """Play one game. ``weights`` is ``[ObjectRef]`` (a list, so that Ray does not
        fetch it) of the learner's state dict, fetched only when its version is new."""
        if weights_version != self.weights_version:
            import ray

            self.network.set_weights(ray.get(weights[0]))
            self.weights_version = weights_version
        return play_game(
            self.network,
            self.env_config,
            self.mcts_config,
            self.rng,
            self.weights_version,
            grid_channels=self.grid_channels,
        )


def start_workers(count: int, configs: RunConfigs, *, seed: int) -> list[Any]:
    """``count`` self-play actors (one CPU each) with the ``env``, ``model``, ``train`` and
    ``mcts`` configs of ``configs``, seeded ``seed + 1 + i``."""
    import ray

    actor = ray.remote(num_cpus=1)(SelfPlayWorker)
    return [
        actor.remote(configs.env, configs.model, configs.train, configs.mcts, seed + 1 + index)
        for index in range(count)
    ]
