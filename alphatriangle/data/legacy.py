"""Loading runs written by alphatriangle 1.0.0.

1.0.0 wrote ``runs/<run>/checkpoints/latest.pkl``, ``checkpoint_step_<N>.pkl`` and
``best.pkl`` (each a pickled ``CheckpointData``) and ``runs/<run>/buffers/buffer.pkl`` (a
pickled ``BufferData``), in place. These are pickles: they run code when loaded, so load only
runs you trust. A truncated or unreadable file raises ``CheckpointCorruptError`` naming it;
:func:`load_legacy_checkpoint_dir` falls back to the newest readable file, loudly.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

from alphatriangle.config import PersistenceConfig
from alphatriangle.data.checkpoint import (
    CheckpointCorruptError,
    CheckpointNotFoundError,
    newest_intact,
)
from alphatriangle.data.schemas import BufferData, CheckpointData

__all__ = [
    "legacy_checkpoint_files",
    "load_legacy_buffer",
    "load_legacy_checkpoint",
    "load_legacy_checkpoint_dir",
]

_STEP_FILE = re.compile(r"^checkpoint_step_(\d+)\.pkl$")


def _unpickle(path: Path, expected: type[Any]) -> Any:
    try:
        with path.open("rb") as file:
            loaded = pickle.load(file)
    except FileNotFoundError:
        raise
    except Exception as exc:  # EOFError, UnpicklingError, a missing class...
        raise CheckpointCorruptError(
            f"corrupt checkpoint file {path}: cannot unpickle it ({type(exc).__name__}: {exc})",
            path=path,
        ) from exc
    if isinstance(loaded, expected):
        return loaded
    if isinstance(loaded, dict):  # some 1.0.0 builds pickled the plain dict
        try:
            return expected.model_validate(loaded)
        except ValueError as exc:
            raise CheckpointCorruptError(
                f"corrupt checkpoint file {path}: {exc}", path=path
            ) from exc
    raise CheckpointCorruptError(
        f"corrupt checkpoint file {path}: holds a {type(loaded).__name__}, "
        f"not a {expected.__name__}",
        path=path,
    )


def load_legacy_checkpoint(path: str | Path) -> CheckpointData:
    """One 1.0.0 checkpoint file."""
    return _unpickle(Path(path), CheckpointData)  # type: ignore[no-any-return]


def load_legacy_buffer(path: str | Path) -> BufferData:
    """One 1.0.0 buffer file."""
    return _unpickle(Path(path), BufferData)  # type: ignore[no-any-return]


def legacy_checkpoint_files(
    checkpoint_dir: Path, persist: PersistenceConfig | None = None
) -> list[Path]:
    """The 1.0.0 checkpoint files of a run, newest first: ``latest.pkl``, then
    ``checkpoint_step_<N>.pkl`` by descending step, then ``best.pkl``."""
    persist = persist or PersistenceConfig()
    files = []
    latest = checkpoint_dir / persist.LATEST_CHECKPOINT_FILENAME
    if latest.is_file():
        files.append(latest)
    steps = []
    if checkpoint_dir.is_dir():
        for path in checkpoint_dir.iterdir():
            match = _STEP_FILE.match(path.name)
            if match and path.is_file():
                steps.append((int(match.group(1)), path))
    files += [path for _, path in sorted(steps, reverse=True)]
    best = checkpoint_dir / persist.BEST_CHECKPOINT_FILENAME
    if best.is_file():
        files.append(best)
    return files


def load_legacy_checkpoint_dir(
    checkpoint_dir: Path, persist: PersistenceConfig | None = None
) -> tuple[CheckpointData, Path]:
    """The newest readable 1.0.0 checkpoint of a run, and its file. Each unreadable file is
    logged as an error naming it; when none is readable, :class:`CheckpointCorruptError`
    names them all; when there is none, :class:`CheckpointNotFoundError`."""
    files = legacy_checkpoint_files(checkpoint_dir, persist)
    if not files:
        raise CheckpointNotFoundError(
            f"no 1.0.0 checkpoint in {checkpoint_dir}", path=checkpoint_dir
        )

    def none_readable(errors: list[CheckpointCorruptError]) -> CheckpointCorruptError:
        return CheckpointCorruptError(
            f"no 1.0.0 checkpoint of {checkpoint_dir} is readable: "
            + "; ".join(str(e) for e in errors),
            path=checkpoint_dir,
        )

    found = newest_intact(
        files,
        load_legacy_checkpoint,
        skipped="skipping unreadable 1.0.0 checkpoint %s: %s",
        found="loaded %s, the newest readable 1.0.0 checkpoint of the run",
        none_intact=none_readable,
    )
    assert found is not None  # files is not empty: one loads, or none_readable is raised
    path, data = found
    return data, path
