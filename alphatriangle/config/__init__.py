"""Pydantic configuration of alphatriangle: one small model per component, validated on
construction with messages naming the field."""

from alphatriangle.config.env_config import EnvConfig
from alphatriangle.config.model_config import ModelConfig
from alphatriangle.config.persistence_config import PersistenceConfig
from alphatriangle.config.train_config import TrainConfig

__all__ = ["EnvConfig", "ModelConfig", "PersistenceConfig", "TrainConfig"]
