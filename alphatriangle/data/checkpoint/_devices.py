"""Where restored tensors go: ``map_location`` with ``torch.load``'s meaning.

- None: each tensor on the device it was saved from;
- a ``torch.device`` or a string (``"cpu"``, ``"cuda:1"``): every tensor there;
- a dict of saved device to device (``{"cuda:1": "cuda:0"}``): those remapped, the others
  where they were saved;
- a callable ``f(storage, location)``: called once per saved device, with an empty CPU
  storage and the saved device's name; the device of what it returns is where that device's
  tensors go (None: where they were saved). ``lambda storage, loc: storage`` keeps everything
  on the CPU, as with ``torch.load``.

Anything else is a ``TypeError`` naming ``map_location``, a device name that torch does not
parse a ``ValueError`` naming it; both before anything is read. The answer for each saved
device is computed once per restore.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = ["DeviceMap"]


def _device(value: object, what: str) -> torch.device:
    if isinstance(value, torch.device):
        return value
    if not isinstance(value, str):
        raise TypeError(
            f"map_location: {what} must be a torch.device or a device name, got {value!r:.80}"
        )
    try:
        return torch.device(value)
    except RuntimeError as exc:
        raise ValueError(f"map_location: {what} {value!r:.80} is not a device ({exc})") from None


class DeviceMap:
    """A ``map_location``, checked once, answering "where do tensors saved on X go"."""

    def __init__(self, map_location: Any = None) -> None:
        self._everything: torch.device | None = None
        self._mapping: dict[str, torch.device] = {}
        self._function: Callable[[Any, str], Any] | None = None
        self._answers: dict[str, torch.device] = {}
        if map_location is None:
            return
        if isinstance(map_location, (str, torch.device)):
            self._everything = _device(map_location, "the device")
        elif isinstance(map_location, Mapping):
            for saved, target in map_location.items():
                key = str(_device(saved, "a key of the dict"))
                self._mapping[key] = _device(target, f"the value of {saved!r}")
        elif callable(map_location):
            self._function = map_location
        else:
            raise TypeError(
                "map_location must be None, a torch.device, a device name, a dict of device "
                f"names, or a callable (storage, location); got {type(map_location).__name__}"
            )

    @classmethod
    def of(cls, map_location: Any) -> DeviceMap:
        """``map_location`` as a :class:`DeviceMap` (one already made is returned as is)."""
        return map_location if isinstance(map_location, DeviceMap) else cls(map_location)

    @property
    def is_identity(self) -> bool:
        """Whether every tensor goes back where it was saved."""
        return self._everything is None and not self._mapping and self._function is None

    def __call__(self, saved: str) -> torch.device:
        """The device for tensors saved on ``saved`` (a device name from the index)."""
        answer = self._answers.get(saved)
        if answer is None:
            answer = self._answers[saved] = self._resolve(saved)
        return answer

    def _resolve(self, saved: str) -> torch.device:
        if self._everything is not None:
            return self._everything
        if self._function is not None:
            empty = torch.empty(0, dtype=torch.uint8).untyped_storage()
            moved = self._function(empty, saved)
            if moved is None:
                return torch.device(saved)
            device = getattr(moved, "device", None)
            if not isinstance(device, torch.device):
                raise TypeError(
                    f"map_location returned {type(moved).__name__} for {saved!r}: a storage "
                    "or tensor (its device is used) or None was expected"
                )
            return device
        return self._mapping.get(saved, torch.device(saved))
