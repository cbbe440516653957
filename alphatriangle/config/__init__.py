"""Pydantic configuration of alphatriangle: one small model per component, validated on
construction with messages naming the field."""

from alphatriangle.config.base import ConfigBase, IgnoredFieldWarning
from alphatriangle.config.env_config import EnvConfig
from alphatriangle.config.mcts_config import MCTSConfig
from alphatriangle.config.model_config import ModelConfig
from alphatriangle.config.persistence_config import PersistenceConfig
from alphatriangle.config.run_config import ConfigFileError, RunConfigs
from alphatriangle.config.train_config import TrainConfig

__all__ = [
    "ConfigBase",
    "ConfigFileError",
    "EnvConfig",
    "IgnoredFieldWarning",
    "MCTSConfig",
    "ModelConfig",
    "PersistenceConfig",
    "RunConfigs",
    "TrainConfig",
]
