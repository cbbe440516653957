"""The reference trainer: Ray self-play workers, a learner on the replay buffer, stats to
MLflow, checkpoints through the ``DataManager``. ``ray`` and ``mlflow`` are imported when a
run starts, not with this package."""

from alphatriangle.training.learner import Learner
from alphatriangle.training.runner import TrainingSummary, check_configs, run_training
from alphatriangle.training.search import SearchResult, run_search
from alphatriangle.training.self_play import GameResult, SelfPlayWorker, play_game

__all__ = [
    "GameResult",
    "Learner",
    "SearchResult",
    "SelfPlayWorker",
    "TrainingSummary",
    "check_configs",
    "play_game",
    "run_search",
    "run_training",
]
