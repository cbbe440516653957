"""Named presets of ``alphatriangle train --preset NAME``: YAML config files shipped in the
package (``quick``: the small reference run). A preset applies on top of the defaults and
under a ``--config`` file and the flags."""

from __future__ import annotations

from pathlib import Path

__all__ = ["preset_names", "preset_path"]

_DIRECTORY = Path(__file__).parent


def preset_names() -> list[str]:
    """The names of the shipped presets, sorted."""
    return sorted(path.stem for path in _DIRECTORY.glob("*.yaml"))


def preset_path(name: str) -> Path:
    """The file of preset ``name``; ValueError naming the presets there are."""
    path = _DIRECTORY / f"{name}.yaml"
    if "/" in name or "\\" in name or not path.is_file():
        raise ValueError(f"no preset named {name!r}: the presets are {', '.join(preset_names())}")
    return path
