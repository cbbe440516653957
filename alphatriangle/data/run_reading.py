"""Reading a run's committed steps for the DataManager: which step holds an item, which is
the best, the newest intact checkpoint and buffer of a run (ours or one 1.0.0 wrote), and an
explicit load path.

Guarantee: a corrupt or truncated step or file is skipped for the newest intact one with an
error-level log naming it; a run whose checkpoints are all unreadable raises, naming them.
Cost: listing reads each step's manifest (small JSON); reading maps or copies the item's data
file and verifies its checksums (the engine's restore).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alphatriangle.config import PersistenceConfig, TrainConfig
from alphatriangle.data.checkpoint import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointManager,
    CheckpointNotFoundError,
    step_from_dir_name,
)
from alphatriangle.data.engine_options import BEST_FLAG, reader_options
from alphatriangle.data.legacy import (
    legacy_checkpoint_files,
    load_legacy_buffer,
    load_legacy_checkpoint,
    load_legacy_checkpoint_dir,
)
from alphatriangle.data.schemas import BufferData, LoadedTrainingState
from alphatriangle.data.state_trees import (
    BUFFER_ITEM,
    CHECKPOINT_ITEM,
    buffer_from_tree,
    checkpoint_from_tree,
)

__all__ = [
    "best_step",
    "has_steps",
    "load_path",
    "newest_holding",
    "newest_other_run",
    "optional_buffer",
    "read_explicit",
    "read_run",
    "read_run_dir",
    "step_of",
]

logger = logging.getLogger(__name__)

_TIMESTAMP = re.compile(r"(\d{8}_\d{6})")
# How each item's tree becomes its schema (the tag is checked there).
_SCHEMA_OF: dict[str, Callable[[Any, Path], Any]] = {
    CHECKPOINT_ITEM: checkpoint_from_tree,
    BUFFER_ITEM: buffer_from_tree,
}


def _reader(directory: Path) -> CheckpointManager:
    return CheckpointManager(directory, reader_options())


def committed_steps(directory: Path) -> list[int]:
    with _reader(directory) as reader:
        return reader.all_steps()


def has_steps(directory: Path) -> bool:
    return bool(committed_steps(directory))


def manifests(reader: CheckpointManager) -> list[tuple[int, dict[str, Any]]]:
    """(step, manifest) of each committed step, ascending; a step deleted or unreadable
    meanwhile is left out (restoring it says what is wrong)."""
    found = []
    for step in reader.all_steps():
        try:
            found.append((step, reader.metadata(step)))
        except CheckpointError:
            continue
    return found


def newest_holding(reader: CheckpointManager, item: str) -> int | None:
    holding = [step for step, manifest in manifests(reader) if item in manifest["items"]]
    return holding[-1] if holding else None


def best_step(reader: CheckpointManager) -> int | None:
    """The newest step flagged ``is_best``, else the best ranked by the reader's
    ``best_metric``."""
    flagged = [
        step for step, manifest in manifests(reader) if manifest["metrics"].get(BEST_FLAG) == 1.0
    ]
    return flagged[-1] if flagged else reader.best_step()


def step_of(state: LoadedTrainingState) -> int | None:
    return None if state.checkpoint_data is None else state.checkpoint_data.global_step


def read_run(manager: CheckpointManager) -> LoadedTrainingState:
    """The newest intact checkpoint and buffer of a run (each from the newest step holding
    it; a corrupt step is skipped loudly; all corrupt: raises)."""
    found: dict[str, Any] = {}
    for item, from_tree in _SCHEMA_OF.items():
        try:
            tree = manager.restore(item=item, fallback=True)
        except CheckpointNotFoundError:
            continue
        found[item] = from_tree(tree, manager.directory)
    return LoadedTrainingState(
        checkpoint_data=found.get(CHECKPOINT_ITEM), buffer_data=found.get(BUFFER_ITEM)
    )


def load_path(path: Path, item: str) -> tuple[Any, Path | None]:
    """An explicit load path: a step directory of ours, or a 1.0.0 ``.pkl``."""
    if path.is_file():
        if item == CHECKPOINT_ITEM:
            return load_legacy_checkpoint(path), None
        return load_legacy_buffer(path), None
    step = step_from_dir_name(path.name)
    if step is None or step not in committed_steps(path.parent):
        raise CheckpointNotFoundError(
            f"{path} is neither a step directory (step_<N>/ with a manifest) nor a 1.0.0 .pkl file",
            path=path,
        )
    with _reader(path.parent) as reader:
        tree = reader.restore(step, item=item)
    return _SCHEMA_OF[item](tree, path), path


def optional_buffer(step_dir: Path) -> BufferData | None:
    with _reader(step_dir.parent) as reader:
        step = step_from_dir_name(step_dir.name)
        assert step is not None
        if BUFFER_ITEM not in reader.metadata(step)["items"]:
            return None
        return buffer_from_tree(reader.restore(step, item=BUFFER_ITEM), step_dir)


def newest_other_run(persist: PersistenceConfig, current_run_name: str) -> str | None:
    """The name of the newest run but ``current_run_name`` (by the ``YYYYmmdd_HHMMSS``
    timestamp in its name) that has checkpoints, ours or 1.0.0's; None when there is none."""
    runs_root = persist.get_runs_root_dir()
    if not runs_root.is_dir():
        return None
    candidates = []
    for run_dir in runs_root.iterdir():
        match = _TIMESTAMP.search(run_dir.name)
        if not match or run_dir.name == current_run_name or not run_dir.is_dir():
            continue
        checkpoints = run_dir / persist.CHECKPOINT_SAVE_DIR_NAME
        if has_steps(checkpoints) or legacy_checkpoint_files(checkpoints, persist):
            candidates.append((match.group(1), run_dir.name))
    return max(candidates)[1] if candidates else None


def read_explicit(train: TrainConfig) -> LoadedTrainingState:
    """``LOAD_CHECKPOINT_PATH`` (with the buffer of its step directory, unless
    ``LOAD_BUFFER_PATH`` is given) and ``LOAD_BUFFER_PATH``."""
    checkpoint = buffer = None
    if train.LOAD_CHECKPOINT_PATH:
        checkpoint, step_dir = load_path(Path(train.LOAD_CHECKPOINT_PATH), CHECKPOINT_ITEM)
        if not train.LOAD_BUFFER_PATH and step_dir is not None:
            buffer = optional_buffer(step_dir)
    if train.LOAD_BUFFER_PATH:
        buffer, _ = load_path(Path(train.LOAD_BUFFER_PATH), BUFFER_ITEM)
    logger.info("loading the explicit checkpoint %s", train.LOAD_CHECKPOINT_PATH)
    return LoadedTrainingState(checkpoint_data=checkpoint, buffer_data=buffer)


def read_run_dir(run_dir: Path, persist: PersistenceConfig) -> LoadedTrainingState:
    """The newest intact checkpoint and buffer of another run: ours, or one 1.0.0 wrote."""
    checkpoints = run_dir / persist.CHECKPOINT_SAVE_DIR_NAME
    if has_steps(checkpoints):
        with _reader(checkpoints) as reader:
            return read_run(reader)
    checkpoint, _ = load_legacy_checkpoint_dir(checkpoints, persist)
    buffer_file = run_dir / persist.BUFFER_SAVE_DIR_NAME / persist.BUFFER_FILENAME
    buffer = None
    if buffer_file.is_file():
        try:
            buffer = load_legacy_buffer(buffer_file)
        except CheckpointCorruptError as exc:
            logger.error("skipping the unreadable 1.0.0 buffer %s: %s", buffer_file, exc)
    return LoadedTrainingState(checkpoint_data=checkpoint, buffer_data=buffer)
