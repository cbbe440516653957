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

app.add_typer(ckpt_app, name="ckpt")  # the help is ckpt_app's


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


@app.command()
def train(  # noqa: PLR0917 - typer maps each option to a parameter
    root: Annotated[
        Path | None, typer.Option(help="Data root (PersistenceConfig.ROOT_DATA_DIR).")
    ] = None,
    run_name: Annotated[
        str | None, typer.Option(help="Run name; an existing run resumes. Default: timestamped.")
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Train until this global step (default TrainConfig's, 100000; quick: 1000).",
        ),
    ] = None,
    save_every: Annotated[
        int | None,
        typer.Option(min=1, help="Checkpoint and buffer every K steps (default 2500 and 1000)."),
    ] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Self-play workers.")] = None,
    preset: Annotated[
        str | None,
        typer.Option(help="A shipped preset under --config and the flags: quick (a small run)."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML or JSON file overriding any config field.")
    ] = None,
    seed: Annotated[int | None, typer.Option(min=0, help="Random seed.")] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking server (default: a store under root).")
    ] = None,
    ray_address: Annotated[
        str | None, typer.Option(help="An existing Ray cluster (default: a local Ray).")
    ] = None,
) -> None:
    """Train with Ray self-play workers, checkpointing as it goes; resume a run that has
    checkpoints. SIGTERM or Ctrl-C stop after a final checkpoint (Ctrl-C twice: at once)."""
    from alphatriangle.training.cli_run import train_command

    train_command(
        root=root,
        run_name=run_name,
        steps=steps,
        save_every=save_every,
        workers=workers,
        preset=preset,
        config=config,
        seed=seed,
        tracking_uri=tracking_uri,
        ray_address=ray_address,
    )


if __name__ == "__main__":
    app()
