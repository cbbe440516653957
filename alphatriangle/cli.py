"""The ``alphatriangle`` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from alphatriangle import __version__
from alphatriangle.ckpt_tools import ckpt_app

app = typer.Typer(
    help="alphatriangle: AlphaZero-style training with async, crash-safe checkpoints.",
    no_args_is_help=True,
    add_completion=False,
)

app.add_typer(ckpt_app, name="ckpt", help="List, inspect, verify, prune and export checkpoints.")


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


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
