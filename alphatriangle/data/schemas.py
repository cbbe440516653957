"""What a training state is made of: the schemas of alphatriangle 1.0.0, extended.

The module path and field names are 1.0.0's, so that pickles written by 1.0.0
(``alphatriangle.data.schemas.CheckpointData`` / ``BufferData``) load with these classes;
objects from them lack the fields added since, which take their defaults on load.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["BufferData", "CheckpointData", "LoadedTrainingState"]


class _Schema(BaseModel):
    # protected_namespaces=(): 1.0.0's field names begin with "model_".
    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=())

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickling (1.0.0's pickles included): fields added since take their defaults."""
        super().__setstate__(state)
        for name, field in type(self).model_fields.items():
            if name not in self.__dict__:
                self.__dict__[name] = field.get_default(call_default_factory=True)


class CheckpointData(_Schema):
    """The learner's state at one step (1.0.0's fields first)."""

    run_name: str
    global_step: int = Field(..., ge=0)
    episodes_played: int = Field(..., ge=0)
    total_simulations_run: int = Field(..., ge=0)
    model_config_dict: dict[str, Any]
    env_config_dict: dict[str, Any]
    model_state_dict: dict[str, Any]
    optimizer_state_dict: dict[str, Any]
    stats_collector_state: dict[str, Any] = Field(default_factory=dict)
    # Added since 1.0.0:
    scheduler_state_dict: dict[str, Any] | None = None
    rng_state: dict[str, Any] | None = None  # python, numpy, torch, torch_cuda
    user_data: dict[str, Any] = Field(default_factory=dict)


class BufferData(_Schema):
    """The replay buffer: 1.0.0's ``buffer_list`` of experience tuples (for code written
    against 1.0.0, and runs it wrote), or the columnar ``ExperienceBuffer.state_dict()``."""

    buffer_list: list[Any] = Field(default_factory=list)
    buffer_state: dict[str, Any] | None = None


class LoadedTrainingState(_Schema):
    """What ``DataManager.load_initial_state`` finds: either part may be None."""

    checkpoint_data: CheckpointData | None = None
    buffer_data: BufferData | None = None
