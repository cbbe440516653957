"""``alphatriangle ckpt``: list, inspect, verify, prune and export checkpoints.

Every command takes PATH first: a data root, a run directory or a checkpoint directory. A
data root holding several runs: ``list``, ``verify`` and ``prune`` cover every run (or the
one ``--run`` names); ``inspect`` and ``export`` need ``--run`` to choose. Every command
reads without taking the writer lock (``prune --yes`` alone takes it, and refuses while a
writer holds it), and none unpickles anything: inspecting an untrusted checkpoint runs none
of its code. A user error (no such path, run, step or key, a metric no step logged, an
unreadable file) is one line on stderr and exit code 1 (2 for a wrong command line), never a
traceback. The shared arguments and the user errors: ``_ckpt_args.py``.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from alphatriangle._ckpt_args import (
    PathArg,
    RunOpt,
    StepOpt,
    UserError,
    one_checkpoint_dir,
    one_line,
    open_reader,
    readers,
    report_error,
    step_or_newest,
    user_errors,
)

ckpt_app = typer.Typer(
    help="List, inspect, verify, prune and export checkpoints.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# -- list -----------------------------------------------------------------------------------


def _pending_uploads(directory: Path) -> dict[int, str] | None:
    """Steps waiting for upload, each with why ("" when not known); None when the directory
    is not synced (no ledger)."""
    from alphatriangle.data.checkpoint import CheckpointError, read_upload_status

    try:
        status = read_upload_status(directory)
    except CheckpointError as exc:
        report_error(exc)
        return None
    if status is None:
        return None
    return {step: status.failures.get(step, status.retrying or "") for step in status.pending}


@ckpt_app.command("list")
@user_errors
def list_steps(path: PathArg, run: RunOpt = None) -> None:
    """Every run's committed steps: size (the bytes of the step alone, and those it shares
    with other steps), time, metrics, items, upload state."""
    from alphatriangle.data.checkpoint import CheckpointError, step_dir_name, step_usage

    bad = 0
    for reader in readers(path, run):
        typer.echo(f"{reader.directory}:")
        pending = _pending_uploads(reader.directory)
        steps = reader.all_steps()
        if not steps:
            typer.echo("  no committed steps")
        for step in steps:
            try:
                meta = reader.metadata(step)
            except CheckpointError as exc:
                bad += 1
                report_error(exc)
                continue
            try:
                own, shared = step_usage(reader.directory / step_dir_name(step))
            except FileNotFoundError:  # deleted meanwhile
                continue
            when = dt.datetime.fromtimestamp(meta["wall_time"]).isoformat(timespec="seconds")
            upload = "" if pending is None else "uploaded"
            if pending is not None and step in pending:
                upload = f"pending upload ({pending[step]})" if pending[step] else "pending upload"
            typer.echo(
                f"  {step:>12}  {own / 1e6:10.1f} MB own  {shared / 1e6:8.1f} MB shared  {when}  "
                f"items={','.join(meta['items'])}  "
                f"{json.dumps(meta['metrics'])}  {upload}".rstrip()
            )
    if bad:
        raise typer.Exit(code=1)


# -- inspect --------------------------------------------------------------------------------


def _pickled_kinds(step_dir: Path, item: str, files: dict[str, Any]) -> list[str] | None:
    """What each pickled leaf of ``item`` is, read from its pickle without running it."""
    from alphatriangle._pickled_types import pickled_types
    from alphatriangle.data.checkpoint import objects_file

    name = objects_file(item)
    if name not in files:
        return None
    try:
        return pickled_types((step_dir / name).read_bytes())
    except ValueError as exc:
        raise UserError(f"{step_dir / name}: {exc}") from None


def _jsonable(tree: Any, kinds: list[str] | None) -> Any:
    from alphatriangle.data.checkpoint import ArrayMetadata, PickledObject

    if isinstance(tree, ArrayMetadata):
        return {"array": tree.framework, "dtype": tree.dtype, "shape": list(tree.shape),
                "nbytes": tree.nbytes, "device": tree.device}  # fmt: skip
    if isinstance(tree, PickledObject):
        kind = kinds[tree.index] if kinds is not None and tree.index < len(kinds) else "?"
        return {"pickled_object": tree.index, "type": kind}
    if isinstance(tree, dict):
        return {str(k): _jsonable(v, kinds) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_jsonable(v, kinds) for v in tree]
    return tree


def _leaves(tree: Any, where: str, kinds: list[str] | None) -> Iterator[tuple[str, str]]:
    """(path, description) of every leaf: arrays by dtype, shape and device, pickled objects
    by type, scalars and strings by value."""
    from alphatriangle.data.checkpoint import ArrayMetadata, PickledObject

    if isinstance(tree, ArrayMetadata):
        yield where, f"{tree.framework} {tree.dtype} {tuple(tree.shape)} on {tree.device}"
    elif isinstance(tree, PickledObject):
        kind = kinds[tree.index] if kinds is not None and tree.index < len(kinds) else "?"
        yield where, f"pickled {kind}"
    elif isinstance(tree, dict) and tree:
        for key, value in tree.items():
            yield from _leaves(value, f"{where}[{key!r}]", kinds)
    elif isinstance(tree, (list, tuple)) and tree:
        for index, value in enumerate(tree):
            yield from _leaves(value, f"{where}[{index}]", kinds)
    else:
        yield where, repr(tree)


@ckpt_app.command()
@user_errors
def inspect(
    path: PathArg,
    step: StepOpt = None,
    run: RunOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """A step's manifest, its items, and every leaf of each: tensors and arrays with their
    dtype, shape and device (from the index alone: no data read), pickled objects by type
    (read from the pickle without running it), scalars and strings by value."""
    directory = one_checkpoint_dir(path, run)  # before importing the engine: a quick error

    from alphatriangle.data.checkpoint import step_dir_name

    with open_reader(directory) as reader:
        step = step_or_newest(reader, step)
        meta = reader.metadata(step)
        step_dir = reader.directory / step_dir_name(step)
        trees = {item: reader.array_metadata(step, item=item) for item in meta["items"]}
        kinds = {item: _pickled_kinds(step_dir, item, meta["files"]) for item in trees}
    if as_json:
        items = {item: _jsonable(tree, kinds[item]) for item, tree in trees.items()}
        report = {"step": step, "directory": str(step_dir), "manifest": meta, "items": items}
        typer.echo(json.dumps(report, indent=2, default=str))
        return
    typer.echo(f"step {step} in {step_dir}")
    typer.echo(f"  metrics {json.dumps(meta['metrics'])}; items {', '.join(meta['items'])}")
    for item, tree in trees.items():
        typer.echo(f"  {item}:")
        for where, leaf in _leaves(tree, item, kinds[item]):
            typer.echo(f"    {where}: {leaf}")


# -- verify ---------------------------------------------------------------------------------


def _signing_key(key_file: Path | None) -> bytes | None:
    if key_file is None:
        return None
    key = key_file.read_bytes()
    if len(key) < 16:
        raise UserError(f"{key_file} holds {len(key)} bytes: a signing key has at least 16", 2)
    return key


@ckpt_app.command()
@user_errors
def verify(
    path: PathArg,
    run: RunOpt = None,
    signing_key_file: Annotated[
        Path | None,
        typer.Option(
            "--signing-key-file",
            help="A file whose bytes are the signing key: signatures are checked too.",
        ),
    ] = None,
) -> None:
    """Check every file of every step (sizes, checksums, indexes) and, with
    --signing-key-file, every signature; exit 1 naming each corrupt file. Without a key, the
    signatures of signed steps are not checked, and the output says so. Nothing is
    unpickled."""
    from rich.progress import Progress

    from alphatriangle.data.checkpoint import CheckpointError

    key = _signing_key(signing_key_file)
    bad = unchecked = 0
    for reader in readers(path, run, signing_key=key):
        steps = reader.all_steps()
        with Progress(disable=not sys.stderr.isatty(), transient=True) as progress:
            task = progress.add_task(f"verifying {reader.directory}", total=len(steps))
            for step in steps:
                try:
                    reader.verify(step)
                    signed = "signature" in reader.metadata(step)
                except CheckpointError as exc:
                    bad += 1
                    typer.echo(f"{reader.directory}/step {step}: {one_line(exc)}", err=True)
                else:
                    note = ""
                    if key is not None:
                        note = " (signature verified)"
                    elif signed:
                        unchecked += 1
                        note = " (signed: signature not checked)"
                    where = f"{reader.directory.parent.name}/{reader.directory.name}"
                    typer.echo(f"{where}/step {step}: ok{note}")
                progress.advance(task)
    if unchecked:
        typer.echo(
            f"signatures not checked: {unchecked} signed step(s); pass --signing-key-file "
            "to check them"
        )
    if bad:
        raise typer.Exit(code=1)


# -- prune ----------------------------------------------------------------------------------


@ckpt_app.command()
@user_errors
def prune(  # noqa: PLR0917 - typer maps each option to a parameter
    path: PathArg,
    keep_latest: Annotated[int, typer.Option(min=1, help="Keep the N newest steps.")] = 3,
    keep_best: Annotated[int, typer.Option(min=0, help="Also keep the K best by --metric.")] = 0,
    metric: Annotated[str, typer.Option(help="The metric --keep-best ranks by.")] = "loss",
    mode: Annotated[str, typer.Option(help="min or max.")] = "min",
    keep_every: Annotated[int, typer.Option(min=0, help="Also keep steps divisible by S.")] = 0,
    run: RunOpt = None,
    yes: Annotated[bool, typer.Option("--yes", help="Delete; without it, only list.")] = False,
) -> None:
    """List the steps a retention policy would delete in every run (or the one --run names);
    delete them with --yes (refused while a writer holds the directory). The newest step,
    and the newest holding each item, are always kept."""
    from alphatriangle.data.checkpoint import (
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
        raise UserError(f"--mode must be min or max, not {mode!r}", 2)
    policy: RetentionPolicy = KeepLatest(keep_latest)
    if keep_best:
        policy |= KeepBest(keep_best, metric, mode)  # type: ignore[arg-type]
    if keep_every:
        policy |= KeepEvery(steps=keep_every)
    plans = []
    for reader in readers(path, run):
        steps = reader.all_steps()
        if keep_best and steps and not any(metric in reader.metadata(s)["metrics"] for s in steps):
            raise UserError(f"no step of {reader.directory} logged the metric {metric!r}")
        kept = reader.plan_retention(policy)
        plans.append((reader.directory, [s for s in steps if s not in kept], kept & set(steps)))
    for directory, doomed, kept in plans:
        typer.echo(f"{directory}: would delete {doomed or 'nothing'}; keeps {sorted(kept)}")
        if not yes or not doomed:
            continue
        try:
            writer = CheckpointManager(
                directory, CheckpointManagerOptions(retention=KeepAll(), lock_timeout_s=0)
            )
        except LockTimeoutError as exc:
            raise UserError(f"refused: {exc}") from None
        with writer:
            for step in doomed:
                writer.delete(step)
        typer.echo(f"deleted {doomed}")


# -- export ---------------------------------------------------------------------------------


def _weights_location(reader: Any, step: int, key: str | None) -> tuple[str, tuple[Any, ...]]:
    """(item, path of keys) of the model weights in ``step``: ``key`` (``[ITEM:]a.b``), else
    the DataManager's checkpoint, else the ``model`` of the step's first item."""
    from alphatriangle.data.checkpoint import DEFAULT_ITEM

    items = reader.metadata(step)["items"]
    if key is None:
        if "checkpoint" in items:
            return "checkpoint", ("fields", "model_state_dict")
        return items[0], ("model",)
    item, _, dotted = key.rpartition(":")
    item = item or (DEFAULT_ITEM if DEFAULT_ITEM in items else items[0])
    if item not in items:
        raise UserError(f"step {step} has no item {item!r} (it has {', '.join(items)})")
    return item, tuple(dotted.split("."))


def _subtree(tree: Any, keys: tuple[Any, ...], step: int, item: str) -> Any:
    node = tree
    for depth, key in enumerate(keys):
        where = ".".join(str(k) for k in keys[: depth + 1])
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, (list, tuple)) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            found = ", ".join(map(str, node)) if isinstance(node, dict) else type(node).__name__
            raise UserError(
                f"step {step}, item {item!r} has no key {where!r} (there: {found}); name the "
                "model's weights with --key"
            )
    return node


@ckpt_app.command()
@user_errors
def export(
    path: PathArg,
    out: Annotated[
        Path,
        typer.Argument(help="The file to write: *.safetensors, else a torch.save state dict."),
    ],
    step: StepOpt = None,
    key: Annotated[
        str | None,
        typer.Option(
            "--key",
            help="Where the weights are, as ITEM:a.b or a.b (default: the DataManager's "
            "checkpoint, else model).",
        ),
    ] = None,
    run: RunOpt = None,
) -> None:
    """Write the model weights of a step (the newest by default) to a file other tools load
    without this package: safetensors when OUT ends in .safetensors (needs the safetensors
    package), else a state dict that torch.load(..., weights_only=True) reads. Nothing is
    unpickled."""
    import torch

    from alphatriangle.data.checkpoint import ArrayMetadata

    with open_reader(one_checkpoint_dir(path, run), weights_only=True) as reader:
        step = step_or_newest(reader, step)
        item, keys = _weights_location(reader, step, key)
        weights_meta = _subtree(reader.array_metadata(step, item=item), keys, step, item)
        if not isinstance(weights_meta, dict) or not all(
            isinstance(v, ArrayMetadata) for v in weights_meta.values()
        ):
            raise UserError(
                f"step {step}, item {item!r}, key {'.'.join(keys)!r} is not a dict of tensors"
            )
        tree = reader.restore(step, item=item, select=[keys])
    weights = _subtree(tree, keys, step, item)
    tensors = {str(k): torch.as_tensor(v).detach().contiguous().clone() for k, v in weights.items()}
    if out.suffix == ".safetensors":
        try:
            from safetensors.torch import save_file
        except ImportError:
            raise UserError("writing .safetensors needs `pip install safetensors`") from None
        save_file(tensors, str(out))
    else:
        torch.save(tensors, out)
    typer.echo(f"wrote {len(tensors)} tensors of step {step} to {out}")
