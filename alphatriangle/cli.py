"""The ``alphatriangle`` command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from alphatriangle import __version__

app = typer.Typer(
    help="alphatriangle: AlphaZero-style training with async, crash-safe checkpoints.",
    no_args_is_help=True,
    add_completion=False,
)

DirectoryArg = Annotated[
    Path, typer.Argument(help="A checkpoint directory (the one holding step_* directories).")
]


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


@app.command("list")
def list_steps(directory: DirectoryArg) -> None:
    """List the committed steps of a checkpoint directory with their metrics (read-only)."""
    from alphatriangle.data import CheckpointManager, CheckpointManagerOptions

    with CheckpointManager(directory, CheckpointManagerOptions(read_only=True)) as manager:
        steps = manager.all_steps()
        if not steps:
            typer.echo(f"no committed steps in {directory}")
            return
        for step in steps:
            meta = manager.metadata(step)
            size = sum(f["size"] for f in meta["files"].values())
            typer.echo(f"{step:>12}  {size / 1e6:10.1f} MB  {json.dumps(meta['metrics'])}")


@app.command()
def verify(directory: DirectoryArg) -> None:
    """Check every file of every committed step; exit 1 if any is corrupt. Nothing is
    unpickled: verifying an untrusted checkpoint runs none of its code."""
    from alphatriangle.data import CheckpointError, CheckpointManager, CheckpointManagerOptions

    bad = 0
    with CheckpointManager(directory, CheckpointManagerOptions(read_only=True)) as manager:
        for step in manager.all_steps():
            try:
                manager.verify(step)
                typer.echo(f"step {step}: ok")
            except CheckpointError as exc:
                bad += 1
                typer.echo(f"step {step}: {exc}", err=True)
    if bad:
        raise typer.Exit(code=1)


@app.command()
def demo(
    directory: Annotated[Path, typer.Option(help="Where the demo writes its checkpoints.")] = Path(
        "runs/demo/checkpoints"
    ),
    steps: Annotated[int, typer.Option(min=1, help="Training steps to run.")] = 200,
) -> None:
    """The reference run is not built yet: this runs a small training loop with async
    checkpointing every 20 steps instead, then restores the newest checkpoint."""
    from alphatriangle.demo import run_demo

    run_demo(directory, steps)


if __name__ == "__main__":
    app()
