"""``alphatriangle ckpt``: list, inspect, verify, prune and export checkpoints.

Every command takes a data root, a run directory or a checkpoint directory, and reads
without taking the writer lock (``prune --yes`` alone takes it, and refuses while a writer
holds it). Nothing is unpickled: inspecting an untrusted checkpoint runs none of its code.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

ckpt_app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)

PathArg = Annotated[
    Path, typer.Argument(help="A data root, a run directory or a checkpoint directory.")
]


def _checkpoint_dirs(path: Path) -> list[Path]:
    """The checkpoint directories under ``path`` (itself, its ``checkpoints/``, or those of
    every run under ``runs/``)."""
    from alphatriangle.data.checkpoint.layout import scan_steps

    if not path.exists():
        raise typer.BadParameter(f"{path} does not exist")
    if scan_steps(path).steps or (path / ".writer.lock").exists():
        return [path]
    if (path / "checkpoints").is_dir():
        return [path / "checkpoints"]
    runs = path / "runs" if (path / "runs").is_dir() else path
    found = sorted(p / "checkpoints" for p in runs.iterdir() if (p / "checkpoints").is_dir())
    if not found:
        raise typer.BadParameter(f"no checkpoint directory under {path}")
    return found


def _readers(path: Path) -> Iterator[Any]:
    from alphatriangle.data import CheckpointManager, CheckpointManagerOptions

    for directory in _checkpoint_dirs(path):
        with CheckpointManager(directory, CheckpointManagerOptions(read_only=True)) as reader:
            yield reader


def _pending_uploads(directory: Path) -> set[int] | None:
    """Steps waiting for upload; None when the directory is not synced (no ledger)."""
    ledger = directory / ".uploads.json"
    if not ledger.exists():
        return None
    try:
        return set(json.loads(ledger.read_text())["pending"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        typer.echo(f"{ledger}: unreadable upload ledger ({exc})", err=True)
        return None


@ckpt_app.command("list")
def list_steps(path: PathArg) -> None:
    """Every run's committed steps: size, time, metrics, items, upload state."""
    for reader in _readers(path):
        typer.echo(f"{reader.directory}:")
        pending = _pending_uploads(reader.directory)
        steps = reader.all_steps()
        if not steps:
            typer.echo("  no committed steps")
        for step in steps:
            meta = reader.metadata(step)
            size = sum(f["size"] for f in meta["files"].values())
            when = dt.datetime.fromtimestamp(meta["wall_time"]).isoformat(timespec="seconds")
            upload = "" if pending is None else "pending upload" if step in pending else "uploaded"
            typer.echo(
                f"  {step:>12}  {size / 1e6:10.1f} MB  {when}  items={','.join(meta['items'])}  "
                f"{json.dumps(meta['metrics'])}  {upload}".rstrip()
            )


def _jsonable(tree: Any) -> Any:
    from alphatriangle.data import ArrayMetadata, PickledObject

    if isinstance(tree, ArrayMetadata):
        return {"array": tree.framework, "dtype": tree.dtype, "shape": list(tree.shape),
                "nbytes": tree.nbytes, "device": tree.device}  # fmt: skip
    if isinstance(tree, PickledObject):
        return {"pickled_object": tree.index}
    if isinstance(tree, dict):
        return {str(k): _jsonable(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_jsonable(v) for v in tree]
    return tree


@ckpt_app.command()
def inspect(
    step: Annotated[int, typer.Argument(help="The step to inspect.")],
    path: PathArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """A step's manifest, items, and every tensor and array with its shape and dtype (from
    the index alone: no data read, nothing unpickled)."""
    from alphatriangle.data.checkpoint.manager import CheckpointManager
    from alphatriangle.data.checkpoint.options import CheckpointManagerOptions
    from alphatriangle.data.checkpoint.reading import read_array_metadata, read_manifest

    directory = _checkpoint_dirs(path)[0]
    with CheckpointManager(directory, CheckpointManagerOptions(read_only=True)) as reader:
        meta = reader.metadata(step)
    step_dir = directory / f"step_{step:09d}"
    manifest = read_manifest(step_dir, step)
    items = {
        item: _jsonable(read_array_metadata(step_dir, manifest, item)) for item in manifest.items
    }
    report = {"step": step, "directory": str(step_dir), "manifest": meta, "items": items}
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
        return
    typer.echo(f"step {step} in {step_dir}")
    typer.echo(f"  metrics {json.dumps(meta['metrics'])}; items {', '.join(meta['items'])}")
    for item, tree in items.items():
        typer.echo(f"  {item}:")
        for where, leaf in _leaves(tree, item):
            typer.echo(f"    {where}: {leaf}")


def _leaves(tree: Any, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(tree, dict) and "array" in tree and "shape" in tree:
        yield where, f"{tree['array']} {tree['dtype']} {tuple(tree['shape'])} on {tree['device']}"
    elif isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaves(value, f"{where}[{key!r}]")
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield from _leaves(value, f"{where}[{index}]")


@ckpt_app.command()
def verify(path: PathArg) -> None:
    """Check every file of every step (sizes, checksums, indexes); exit 1 on corruption,
    naming the file. Nothing is unpickled."""
    from rich.progress import Progress

    from alphatriangle.data import CheckpointError

    bad = 0
    for reader in _readers(path):
        steps = reader.all_steps()
        with Progress(disable=not sys.stderr.isatty(), transient=True) as progress:
            task = progress.add_task(f"verifying {reader.directory}", total=len(steps))
            for step in steps:
                try:
                    reader.verify(step)
                    typer.echo(f"{reader.directory.name}/step {step}: ok")
                except CheckpointError as exc:
                    bad += 1
                    typer.echo(f"{reader.directory}/step {step}: {exc}", err=True)
                progress.advance(task)
    if bad:
        raise typer.Exit(code=1)


@ckpt_app.command()
def prune(  # noqa: PLR0917 - typer maps each option to a parameter
    path: PathArg,
    keep_latest: Annotated[int, typer.Option(min=1, help="Keep the N newest steps.")] = 3,
    keep_best: Annotated[int, typer.Option(min=0, help="Also keep the K best by --metric.")] = 0,
    metric: Annotated[str, typer.Option(help="The metric --keep-best ranks by.")] = "loss",
    mode: Annotated[str, typer.Option(help="min or max.")] = "min",
    keep_every: Annotated[int, typer.Option(min=0, help="Also keep steps divisible by S.")] = 0,
    yes: Annotated[bool, typer.Option("--yes", help="Delete; without it, only list.")] = False,
) -> None:
    """List the steps a retention policy would delete; delete them with --yes (refused while
    a writer holds the directory)."""
    from alphatriangle.data import (
        CheckpointManager,
        CheckpointManagerOptions,
        KeepAll,
        KeepBest,
        KeepEvery,
        KeepLatest,
        LockTimeoutError,
        RetentionPolicy,
    )

    if mode not in ("min", "max"):
        raise typer.BadParameter("--mode must be min or max")
    policy: RetentionPolicy = KeepLatest(keep_latest)
    if keep_best:
        policy |= KeepBest(keep_best, metric, mode)  # type: ignore[arg-type]
    if keep_every:
        policy |= KeepEvery(steps=keep_every)
    for directory in _checkpoint_dirs(path):
        with CheckpointManager(directory, CheckpointManagerOptions(read_only=True)) as reader:
            steps = reader.all_steps()
            kept = reader.plan_retention(policy)
        doomed = [s for s in steps if s not in kept]
        typer.echo(
            f"{directory}: would delete {doomed or 'nothing'}; keeps {sorted(kept & set(steps))}"
        )
        if not yes or not doomed:
            continue
        try:
            writer = CheckpointManager(
                directory, CheckpointManagerOptions(retention=KeepAll(), lock_timeout_s=0)
            )
        except LockTimeoutError as exc:
            typer.echo(f"refused: {exc}", err=True)
            raise typer.Exit(code=1) from None
        with writer:
            for step in doomed:
                writer.delete(step)
        typer.echo(f"deleted {doomed}")


@ckpt_app.command()
def export(
    step: Annotated[int, typer.Argument(help="The step whose model weights to export.")],
    out: Annotated[
        Path,
        typer.Argument(help="The file to write: *.safetensors, else a torch.save state dict."),
    ],
    path: PathArg,
) -> None:
    """Write the model weights of a step to a file other tools load without this package:
    safetensors when OUT ends in ``.safetensors`` (needs the ``safetensors`` package), else
    a state dict that ``torch.load(..., weights_only=True)`` reads. Nothing is unpickled."""
    import torch

    from alphatriangle.data import CheckpointManager, CheckpointManagerOptions

    directory = _checkpoint_dirs(path)[0]
    options = CheckpointManagerOptions(read_only=True, weights_only=True)
    with CheckpointManager(directory, options) as reader:
        items = reader.metadata(step)["items"]
        if "checkpoint" in items:
            tree = reader.restore(step, item="checkpoint", select=[("fields", "model_state_dict")])
            weights = tree["fields"]["model_state_dict"]
        else:
            tree = reader.restore(step, select=["model"])
            weights = tree["model"]
    tensors = {k: v.detach().contiguous().clone() for k, v in weights.items()}
    if out.suffix == ".safetensors":
        try:
            from safetensors.torch import save_file
        except ImportError:
            typer.echo("error: writing .safetensors needs `pip install safetensors`", err=True)
            raise typer.Exit(code=1) from None
        save_file(tensors, str(out))
    else:
        torch.save(tensors, out)
    typer.echo(f"wrote {len(weights)} tensors of step {step} to {out}")
