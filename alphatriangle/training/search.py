"""A short PUCT search guided by the network (AlphaZero's, for a one-player game with
rewards): it returns the visit counts at the root, from which the move and the policy
target come.

A node keeps its children's statistics as arrays (one entry per legal action), so that a
selection is a few vector operations; a child's game is made only when first visited. A
leaf's value is the network's; a terminal position is worth 0. Values back up as
``reward + DISCOUNT * value``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from alphatriangle.config import MCTSConfig
from alphatriangle.env import TriangleGame
from alphatriangle.utils.types import StateType

__all__ = ["SearchResult", "run_search"]

FloatArray = np.ndarray[Any, np.dtype[np.float64]]


class _Node:
    __slots__ = ("actions", "children", "game", "n", "priors", "reward", "visit_n", "visit_w", "w")

    def __init__(self, game: TriangleGame, reward: float) -> None:
        self.game = game
        self.reward = reward  # of the move that led here
        self.actions: np.ndarray[Any, np.dtype[np.int64]] | None = None
        self.priors: FloatArray | None = None
        self.visit_n: FloatArray | None = None
        self.visit_w: FloatArray | None = None
        self.children: dict[int, _Node] = {}
        self.n = 0
        self.w = 0.0


class SearchResult:
    """Visit counts per legal action at the root and the root's value estimate."""

    __slots__ = ("actions", "root_value", "simulations", "visits")

    def __init__(
        self,
        actions: np.ndarray[Any, np.dtype[np.int64]],
        visits: FloatArray,
        root_value: float,
        simulations: int,
    ) -> None:
        self.actions, self.visits = actions, visits
        self.root_value, self.simulations = root_value, simulations


def _expand(node: _Node, network: Any) -> float:
    """Set the node's legal actions and priors; the network's value (0 when over)."""
    actions = node.game.valid_actions()
    node.actions = actions
    node.visit_n = np.zeros(len(actions))
    node.visit_w = np.zeros(len(actions))
    if len(actions) == 0:
        node.priors = np.zeros(0)
        return 0.0
    state: StateType = node.game.state()
    probs, values = network.predict(state["grid"][None], state["other_features"][None])
    priors = np.asarray(probs[0], dtype=np.float64)[actions]
    total = priors.sum()
    node.priors = priors / total if total > 0 else np.full(len(actions), 1.0 / len(actions))
    return float(values[0])


def _select(node: _Node, config: MCTSConfig) -> int:
    assert node.visit_n is not None and node.visit_w is not None and node.priors is not None
    mean = node.w / node.n if node.n else 0.0
    q = np.where(node.visit_n > 0, node.visit_w / np.maximum(node.visit_n, 1), mean)
    u = config.PUCT_COEFFICIENT * node.priors * math.sqrt(max(node.n, 1)) / (1 + node.visit_n)
    return int(np.argmax(q + u))


def run_search(
    game: TriangleGame, network: Any, config: MCTSConfig, rng: np.random.Generator
) -> SearchResult:
    """``NUM_SIMULATIONS`` simulations from ``game`` (left unchanged); ``network`` has
    ``predict(grids, other_features) -> (policies, values)``, as ``NeuralNetwork``."""
    root = _Node(game.copy(), 0.0)
    root.w = _expand(root, network)
    root.n = 1
    assert root.actions is not None and root.priors is not None
    if len(root.actions) == 0:
        return SearchResult(root.actions, np.zeros(0), 0.0, 0)
    if config.DIRICHLET_EPSILON > 0 and len(root.actions) > 1:
        noise = rng.dirichlet(np.full(len(root.actions), config.DIRICHLET_ALPHA))
        root.priors = (1 - config.DIRICHLET_EPSILON) * root.priors + (
            config.DIRICHLET_EPSILON * noise
        )
    for _ in range(config.NUM_SIMULATIONS):
        path: list[tuple[_Node, int]] = []
        node = root
        while True:
            assert node.actions is not None
            if len(node.actions) == 0:  # the game is over here: worth its last reward
                value = node.reward
                break
            index = _select(node, config)
            path.append((node, index))
            action = int(node.actions[index])
            child = node.children.get(action)
            if child is None:
                child_game = node.game.copy()
                reward = child_game.step(action)
                child = node.children[action] = _Node(child_game, reward)
                value = _expand(child, network)
                child.n, child.w = 1, value
                value = child.reward + config.DISCOUNT * value
                break
            node = child
        # Back up: each parent sees its child's reward plus the discounted value below.
        for parent, index in reversed(path):
            assert parent.visit_n is not None and parent.visit_w is not None
            parent.visit_n[index] += 1
            parent.visit_w[index] += value
            parent.n += 1
            parent.w += value
            value = parent.reward + config.DISCOUNT * value
    assert root.visit_n is not None
    return SearchResult(root.actions, root.visit_n.copy(), root.w / root.n, config.NUM_SIMULATIONS)
