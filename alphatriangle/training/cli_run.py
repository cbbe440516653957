"""What ``alphatriangle train`` does around :func:`run_training`: build the configs from
the defaults, the preset, the file and the flags, set up logging, report where everything
went, and turn errors into a message and an exit status."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import typer

from alphatriangle.config import RunConfigs

__all__ = ["train_command"]

logger = logging.getLogger(__name__)


def _configs(
    config: Path | None,
    *,
    preset: str | None = None,
    root: Path | None,
    run_name: str | None,
    steps: int | None,
    save_every: int | None,
    workers: int | None,
    seed: int | None,
    tracking_uri: str | None,
) -> RunConfigs:
    overrides: dict[str, Any] = {
        "ROOT_DATA_DIR": None if root is None else str(root),
        "RUN_NAME": run_name,
        "MAX_TRAINING_STEPS": steps,
        "CHECKPOINT_SAVE_FREQ_STEPS": save_every,
        "BUFFER_SAVE_FREQ_STEPS": save_every,
        "NUM_SELF_PLAY_WORKERS": workers,
        "RANDOM_SEED": seed,
        "MLFLOW_TRACKING_URI_OVERRIDE": tracking_uri,
    }
    from alphatriangle.training.presets import preset_path

    return RunConfigs.build(
        config, overrides, preset=None if preset is None else preset_path(preset)
    )


def train_command(*, config: Path | None, ray_address: str | None, **flags: Any) -> None:
    from alphatriangle.data import CheckpointError
    from alphatriangle.training.runner import run_training

    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        configs = _configs(config, **flags)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    train, persist = configs.train, configs.persistence
    typer.echo(
        f"run {train.RUN_NAME}: training to step {train.MAX_TRAINING_STEPS} with "
        f"{train.NUM_SELF_PLAY_WORKERS} self-play workers; data under "
        f"{Path(persist.ROOT_DATA_DIR).absolute()}"
    )
    try:
        summary = run_training(configs, ray_address=ray_address, echo=typer.echo)
    except KeyboardInterrupt:
        typer.echo("aborted: no final checkpoint (the committed ones are kept)", err=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)  # at once: no waiting for saves in flight or for Ray to stop
    except (CheckpointError, ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    stopped = f" (stopped by {summary.stopped_by})" if summary.stopped_by else ""
    typer.echo(
        f"run {summary.run_name}: step {summary.start_step} -> {summary.final_step}{stopped}; "
        f"{summary.episodes_played} games played, buffer {summary.buffer_size} experiences"
    )
    if summary.checkpoint_dir is not None:
        typer.echo(f"checkpoints: {summary.checkpoint_dir}")
        typer.echo(f"  check them: alphatriangle ckpt verify {summary.checkpoint_dir}")
    if summary.tracking_uri is not None:
        typer.echo(
            f"MLflow: {summary.tracking_uri} (experiment alphatriangle, run {summary.run_name})"
        )
        if summary.tracking_uri.startswith("sqlite:"):
            typer.echo(f"  open the UI: mlflow ui --backend-store-uri {summary.tracking_uri}")
        else:
            typer.echo(f"  open the UI: {summary.tracking_uri}")
