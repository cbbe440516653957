"""Names inside a checkpoint directory, and scanning it for committed steps.

```
<directory>/
    step_000002500/                    committed step (renamed into place when durable)
    .step_000005000.tmp-<pid>-<nonce>  in flight, or left by a crash: swept at open
    .step_000000500.del-<nonce>        being deleted by retention: swept at open
    .step_000002500.old-<nonce>        the previous copy of a step replaced with force=True:
                                       put back at open if its replacement never landed
    .writer.lock, .writer.json         the writer lock and who holds it
```
Inside a step, per item (its name: :data:`ITEM_NAME`, the one rule): ``<item>.data``,
``<item>.index.json`` and, when it holds pickled objects, ``<item>.objects.pkl``; the
manifest, ``manifest.json``, last. Only directories named ``step_<9+ digits>`` that hold a
manifest are steps; everything hidden is invisible to readers.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_ITEM",
    "FILE_NAME",
    "ITEM_NAME",
    "MANIFEST_NAME",
    "REMOTE_PARTS_DIR",
    "Leftover",
    "StepScan",
    "check_item_name",
    "data_file",
    "index_file",
    "named_items",
    "objects_file",
    "scan_leftovers",
    "scan_steps",
    "shard_file",
    "shards_index_file",
    "step_dir_name",
    "step_from_dir_name",
    "temporary_dir_name",
    "trash_dir_name",
]

MANIFEST_NAME = "manifest.json"
REMOTE_PARTS_DIR = "parts"  # in remote storage: parts of data files, each under its digest
STEP_WIDTH = 9

DEFAULT_ITEM = "state"  # the item of save(step, state)
ITEM_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,127}$")
FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}$")  # any file a manifest lists

_STEP_RE = re.compile(r"^step_(\d{9,})$")
_LEFTOVER_RE = re.compile(r"^\.step_(\d{9,})\.(tmp|del|old)-[\w-]+$")


def step_dir_name(step: int) -> str:
    """``step_000002500`` for 2500; wider steps keep all their digits."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return f"step_{step:0{STEP_WIDTH}d}"


def step_from_dir_name(name: str) -> int | None:
    """The step a committed directory name stands for, or None for any other name."""
    match = _STEP_RE.match(name)
    return int(match.group(1)) if match else None


def shard_file(item: str, rank: int) -> str:
    """The file of one rank's share of an item saved by several ranks."""
    return f"{item}.shards-{rank:05d}.data"


def shards_index_file(item: str) -> str:
    """The file saying where each stored chunk of an item saved by several ranks lies."""
    return f"{item}.shards.json"


def data_file(item: str) -> str:
    """The file of an item's array bytes."""
    return f"{item}.data"


def index_file(item: str) -> str:
    """The file of an item's tree and array table."""
    return f"{item}.index.json"


def objects_file(item: str) -> str:
    """The file of an item's pickled objects (only when it has some)."""
    return f"{item}.objects.pkl"


def check_item_name(name: object) -> str:
    """``name`` when it is an item name (letters, digits, ``_`` and ``-``, not first; at
    most 128 characters); ValueError otherwise."""
    if not isinstance(name, str) or not ITEM_NAME.match(name):
        raise ValueError(f"item names are letters, digits, '_' and '-' (not first), got {name!r}")
    return name


def named_items(state: Any, items: Mapping[str, Any] | None) -> dict[str, Any]:
    """The named items of one save: ``state`` alone is the item :data:`DEFAULT_ITEM`;
    ValueError for both, neither item, or a name that is no item name."""
    if items is None:
        return {DEFAULT_ITEM: state}
    if state is not None:
        raise ValueError("give state or items, not both")
    if not items:
        raise ValueError("items must name at least one item")
    for name in items:
        check_item_name(name)
    return dict(items)


def _hidden_name(step: int, kind: str) -> str:
    return f".{step_dir_name(step)}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def temporary_dir_name(step: int) -> str:
    """Where a step is written before it is committed."""
    return _hidden_name(step, "tmp")


def trash_dir_name(step: int, *, replaced: bool = False) -> str:
    """Where a step goes, atomically, before its files are removed.

    ``replaced`` marks the old copy of a step overwritten with ``force=True``: if the process
    dies before the new copy lands, the sweep puts the old one back.
    """
    return _hidden_name(step, "old" if replaced else "del")


@dataclass(frozen=True)
class StepScan:
    """What :func:`scan_steps` found: committed ``steps`` (ascending), and the ``incomplete``
    step-named directories that hold no manifest (empty, or copied in without one): those
    are no steps, and nothing deletes them."""

    steps: list[int]
    incomplete: list[Path]


def scan_steps(directory: Path) -> StepScan:
    """Committed steps in ``directory``: ``step_<digits>`` directories (not links) holding a
    non-empty regular ``manifest.json`` (one ``lstat`` each; its contents are verified when
    the step is read). Missing directory: nothing."""
    steps, incomplete = [], []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                step = step_from_dir_name(entry.name)
                if step is None or not entry.is_dir(follow_symlinks=False):
                    continue
                try:
                    manifest = os.lstat(os.path.join(entry.path, MANIFEST_NAME))  # noqa: PTH118
                    complete = stat.S_ISREG(manifest.st_mode) and manifest.st_size > 0
                except FileNotFoundError:
                    if not os.path.lexists(entry.path):
                        continue  # deleted (or replaced) since the listing: no news
                    complete = False
                if complete:
                    steps.append(step)
                else:
                    incomplete.append(Path(entry.path))
    except FileNotFoundError:
        return StepScan([], [])
    steps.sort()
    return StepScan(steps, sorted(incomplete))


@dataclass(frozen=True)
class Leftover:
    """A hidden directory left by an interrupted save, delete or replace."""

    path: Path
    step: int
    kind: str  # "tmp", "del" or "old"


def scan_leftovers(directory: Path) -> list[Leftover]:
    """Hidden step directories in ``directory`` (see the module docstring)."""
    found = []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                match = _LEFTOVER_RE.match(entry.name)
                if match and entry.is_dir(follow_symlinks=False):
                    found.append(Leftover(Path(entry.path), int(match.group(1)), match.group(2)))
    except FileNotFoundError:
        return []
    return found
