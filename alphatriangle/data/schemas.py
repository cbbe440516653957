"""What a training state is made of: the schemas of alphatriangle 1.0.0, extended.

The module path and field names are 1.0.0's, so that pickles written by 1.0.0
(``alphatriangle.data.schemas.CheckpointData`` / ``BufferData``) load with these classes;
objects from them lack the fields added since, which take their defaults on load.

A buffer saved since 1.0.0 is columns (``BufferData.buffer_state``); its ``buffer_list``,
1.0.0's list of experience tuples, is built from the columns on first use and kept: code
that reads only ``buffer_state`` (``DataManager.apply_loaded_state``) pays nothing for it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_serializer, model_validator

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


class LazyExperienceList(list[Any]):
    """A list of 1.0.0's experience tuples, oldest first, built from a buffer state's
    columns when first used (any read, any change), then an ordinary list. Pickled or
    copied, it is a plain list."""

    def __init__(self, buffer_state: Mapping[str, Any]) -> None:
        super().__init__()
        self._buffer_state: Mapping[str, Any] | None = buffer_state

    def _fill(self) -> None:
        state, self._buffer_state = self._buffer_state, None
        if state is not None:
            from alphatriangle.rl.core.buffer import experiences_from_state

            list.extend(self, experiences_from_state(state))

    def __radd__(self, other: Any) -> Any:
        self._fill()  # then ``other + self`` reads the filled list
        return NotImplemented

    def __reduce__(self) -> tuple[Any, ...]:
        self._fill()
        return (list, (list(list.__iter__(self)),))


def _filling(name: str) -> Callable[..., Any]:
    method = getattr(list, name)

    def filled_first(self: LazyExperienceList, *args: Any, **kwargs: Any) -> Any:
        self._fill()
        return method(self, *args, **kwargs)

    filled_first.__name__ = name
    filled_first.__doc__ = method.__doc__
    return filled_first


for _name in (
    "__len__", "__iter__", "__reversed__", "__getitem__", "__contains__", "__repr__",
    "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__add__", "__mul__",
    "__rmul__", "__iadd__", "__imul__", "__setitem__", "__delitem__", "__sizeof__",
    "append", "extend", "insert", "pop", "remove", "clear", "copy", "count", "index",
    "reverse", "sort",
):  # fmt: skip
    setattr(LazyExperienceList, _name, _filling(_name))


class BufferData(_Schema):
    """The replay buffer: 1.0.0's ``buffer_list`` of experience tuples (for code written
    against 1.0.0, and runs it wrote), or the columnar ``ExperienceBuffer.state_dict()``.
    Given only ``buffer_state``, ``buffer_list`` is a :class:`LazyExperienceList` of the
    same experiences, in insertion order, converted on first use."""

    buffer_list: list[Any] = Field(default_factory=list)
    buffer_state: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _lazy_list(self) -> BufferData:
        if self.buffer_state is not None and "buffer_list" not in self.model_fields_set:
            self.__dict__["buffer_list"] = LazyExperienceList(self.buffer_state)
        return self

    @field_serializer("buffer_list")
    def _plain_list(self, buffer_list: list[Any]) -> list[Any]:
        return list(buffer_list)  # the serializer reads a list's items directly: fill first


class LoadedTrainingState(_Schema):
    """What ``DataManager.load_initial_state`` finds: either part may be None."""

    checkpoint_data: CheckpointData | None = None
    buffer_data: BufferData | None = None
