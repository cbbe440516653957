"""The arguments every ``alphatriangle ckpt`` command shares, resolved: PATH (a data root, a
run directory or a checkpoint directory) and ``--run`` to the checkpoint directories they
mean, read-only managers of them, ``--step`` to a committed step; and the user errors.

A mistake of the caller's (no such path, run or step, several runs where one is needed, an
engine error such as a corrupt file, an OS error) is one line on stderr and exit code 1
(2 for a wrong command line), never a traceback. Nothing here takes the writer lock: every
manager opened is a reader. Cost: listing PATH and, for each candidate directory, its
steps.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar

import typer

__all__ = [
    "PathArg",
    "RunOpt",
    "StepOpt",
    "UserError",
    "checkpoint_dirs",
    "one_checkpoint_dir",
    "one_line",
    "open_reader",
    "readers",
    "report_error",
    "step_or_newest",
    "user_errors",
]

PathArg = Annotated[
    Path, typer.Argument(help="A data root, a run directory or a checkpoint directory.")
]
RunOpt = Annotated[
    str | None, typer.Option("--run", help="The run to read, when PATH holds several.")
]
StepOpt = Annotated[
    int | None, typer.Option("--step", min=0, help="The step (default: the newest).")
]

_P = ParamSpec("_P")
_R = TypeVar("_R")


class UserError(Exception):
    """A mistake of the caller's: one line on stderr, exit ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def one_line(message: object) -> str:
    """``message`` on one line (an error's text may span several)."""
    return " ".join(str(message).split())


def report_error(message: object) -> None:
    """``error: <message>`` on stderr, on one line."""
    typer.echo(f"error: {one_line(message)}", err=True)


def _fail(message: object, code: int) -> NoReturn:
    report_error(message)
    raise typer.Exit(code)


def user_errors(command: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``command``, turning the errors a user can cause into one line on stderr."""

    @functools.wraps(command)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return command(*args, **kwargs)
        except UserError as exc:
            _fail(exc, exc.code)
        except BrokenPipeError:  # the reader stopped reading (``| head``): stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(141) from None
        except Exception as exc:
            # Loaded whenever one of its errors was raised (torch with it: not imported here).
            engine = sys.modules.get("alphatriangle.data.checkpoint")
            if engine is not None and isinstance(exc, engine.CheckpointError):
                _fail(exc, 1)  # not found, corrupt, signature, weights only, lock
            if isinstance(exc, OSError):
                _fail(exc if exc.filename is None else f"{exc.filename}: {exc.strerror}", 1)
            raise

    return run


# -- which directories ----------------------------------------------------------------------


def _is_checkpoint_dir(path: Path) -> bool:
    from alphatriangle.data.checkpoint import is_checkpoint_directory

    return path.name == "checkpoints" or is_checkpoint_directory(path)


def checkpoint_dirs(path: Path, run: str | None = None) -> list[Path]:
    """The checkpoint directories under ``path`` (itself, its ``checkpoints/``, or those of
    every run under ``runs/``), or of the run ``run`` alone."""
    if not path.exists():
        raise UserError(f"{path} does not exist", 2)
    if not path.is_dir():
        raise UserError(f"{path} is not a directory", 2)
    if _is_checkpoint_dir(path):
        found = [path]
    elif (path / "checkpoints").is_dir():
        found = [path / "checkpoints"]
    else:
        runs = path / "runs" if (path / "runs").is_dir() else path
        found = sorted(p / "checkpoints" for p in runs.iterdir() if (p / "checkpoints").is_dir())
        if not found:
            raise UserError(f"no checkpoint directory under {path}", 2)
    if run is None:
        return found
    chosen = [directory for directory in found if directory.parent.name == run]
    if not chosen:
        names = ", ".join(directory.parent.name for directory in found)
        raise UserError(f"no run {run!r} under {path} (runs: {names})", 2)
    return chosen


def one_checkpoint_dir(path: Path, run: str | None) -> Path:
    found = checkpoint_dirs(path, run)
    if len(found) > 1:
        names = ", ".join(directory.parent.name for directory in found)
        raise UserError(f"{path} holds {len(found)} runs ({names}): choose one with --run", 2)
    return found[0]


def open_reader(directory: Path, **options: Any) -> Any:
    from alphatriangle.data.checkpoint import CheckpointManager, CheckpointManagerOptions

    return CheckpointManager(directory, CheckpointManagerOptions(read_only=True, **options))


def readers(path: Path, run: str | None = None, **options: Any) -> Iterator[Any]:
    for directory in checkpoint_dirs(path, run):
        with open_reader(directory, **options) as reader:
            yield reader


def step_or_newest(reader: Any, step: int | None) -> int:
    if step is not None:
        return step
    newest: int | None = reader.latest_step()
    if newest is None:
        raise UserError(f"no committed step in {reader.directory}")
    return newest
