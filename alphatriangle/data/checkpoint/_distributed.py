"""One checkpoint step from the N ranks of a ``torch.distributed`` group: stage, write, commit
once; restore resharded to the layout the ranks have now.

Save, in order (every rank calls it; never on the training's group):

1) :meth:`RankCheckpointer.stage` (caller's thread): the state is flattened the way DCP
   flattens it; each tensor (a DTensor: its local shard) is copied once into this rank's
   reused host buffer (``staging.stage_state``), every other leaf is captured the engine's
   way (JSON tree, pickled objects). An error here (an object that cannot be pickled) is
   kept: the rank still joins the collective part, so that every rank learns of it.
2) :meth:`RankCheckpointer.write` (background): DCP's ``DefaultSavePlanner`` decides who
   writes what (a replicated tensor once, by the least loaded rank; DTensors as local
   shards); rank 0 creates the step's temporary directory; each rank writes its share
   (``_dcp_storage.RankWriter``), rank 0 also rank 0's other leaves as an ordinary item
   (``<item>.index.json``, ``.data``, ``.objects.pkl``); the ranks' results (files, sizes,
   checksums) are gathered to rank 0, which writes ``<item>.shards.json``, then the manifest
   listing every rank's files (with the rank that wrote each), renames the directory into
   place and fsyncs its parent. DCP broadcasts the outcome: when ``write`` returns on any
   rank, the step is committed; when it raises, on every rank, nothing is.

Failures: the original error on the rank where it happened; on the others, a
:class:`CheckpointError` (a :class:`CheckpointCorruptError` for a corrupt file) naming that
rank. A rank that dies: the others' collectives fail within the group's timeout.

Restore (:func:`restore_into`, every rank): DCP's ``DefaultLoadPlanner`` matches the
target's tensors (DTensors with the layout they have now, plain tensors) to the stored
chunks; each rank reads and verifies the regions it needs (``_dcp_storage.RankReader``);
the other leaves are set as rank 0 saved them.

Two gloo groups of the manager's own: the writer thread's collectives on one, the caller's
(agreeing on a save, restore, delete) on the other, so that two threads never share a group.
SIGTERM is recorded, not obeyed, and agreed with the next save decision (preemption).

Cost on the caller's thread: one copy of the rank's tensors, the pickling of its other
leaves, and one small all-reduce per save decision; the rest is a few small gathers of plans
and results per item, on the writer thread.
"""

from __future__ import annotations

import contextlib
import functools
import json
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch.distributed.checkpoint._nested_dict import flatten_state_dict
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save
from torch.distributed.checkpoint.storage import WriteResult
from torch.distributed.tensor import DTensor

from alphatriangle.data.checkpoint._dcp_storage import (
    RankReader,
    RankWriter,
    metadata_from_json,
    metadata_to_json,
    regions_by_file,
)
from alphatriangle.data.checkpoint._fields import canonical
from alphatriangle.data.checkpoint._verified_files import read_listed
from alphatriangle.data.checkpoint.commit import (
    commit_step_dir,
    create_temporary_step_dir,
    remove_tree,
)
from alphatriangle.data.checkpoint.errors import (
    CheckpointCorruptError,
    CheckpointError,
    corrupt_file,
)
from alphatriangle.data.checkpoint.full_restore import ItemRead, read_item
from alphatriangle.data.checkpoint.layout import (
    MANIFEST_NAME,
    shards_index_file,
    step_dir_name,
)
from alphatriangle.data.checkpoint.manifest import build_manifest, seal
from alphatriangle.data.checkpoint.staging import HostBuffer, StagedState, stage_state
from alphatriangle.data.checkpoint.step_writer import (
    StepFile,
    item_data_file,
    write_files,
    write_item_rest,
)

__all__ = ["RankCheckpointer", "StagedRank", "restore_into"]

DEFAULT_TIMEOUT_S = 600.0


@dataclass
class StagedRank:
    """What one rank captured of one save: per item, the tensors DCP plans (views of this
    rank's buffer; DTensors rebuilt over them with their layout) and the other leaves."""

    step: int
    tensors: dict[str, dict[str, torch.Tensor]]
    others: dict[str, StagedState]
    error: BaseException | None = None


def _gloo_group(group: dist.ProcessGroup | None, timeout_s: float) -> dist.ProcessGroup:
    ranks = dist.get_process_group_ranks(group) if group is not None else None
    new = dist.new_group(
        ranks=ranks,
        backend="gloo",
        timeout=timedelta(seconds=timeout_s),
        use_local_synchronization=ranks is not None,
    )
    if not isinstance(new, dist.ProcessGroup):
        raise CheckpointError("this process is not a rank of the group it was given")
    return new


def _views(staged: StagedState, leaves: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each staged tensor as a view of the buffer, with the dtype and shape it had."""
    raw = staged.buffer.tensor
    views = []
    for spec, leaf in zip(staged.arrays, leaves, strict=True):
        if spec.view_of is not None:
            storage = staged.arrays[spec.view_of]
            base = raw[storage.offset : storage.offset + storage.nbytes].view(leaf.dtype)
            views.append(base.as_strided(leaf.shape, spec.stride or (), spec.storage_offset or 0))
        else:
            views.append(
                raw[spec.offset : spec.offset + spec.nbytes].view(leaf.dtype).view(leaf.shape)
            )
    return views


class RankCheckpointer:
    """The multi-rank part of a manager: one per rank, created collectively. It creates two
    gloo groups over the ranks of ``group`` (``timeout_s`` each): one for the background
    writer's collectives, one for the caller's (agreeing on a decision, a step): the two
    threads never share a group, and neither uses the training's."""

    def __init__(
        self, group: dist.ProcessGroup | None = None, *, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> None:
        self.group = _gloo_group(group, timeout_s)
        self.foreground = _gloo_group(group, timeout_s)
        self.rank = dist.get_rank(self.group)
        # SIGTERM (a preemption) is recorded, not obeyed: agree_due makes every rank save
        # the same final step. Only on the main thread, where Python runs handlers.
        self.sigterm_received = False
        self.preempted = False
        self._previous_handler: Any = None
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

    def agree_due(self, due: bool) -> bool:
        """Whether a step is due on any rank, or any rank received SIGTERM (then
        :attr:`preempted` is set on every rank): every rank, on the caller's thread."""
        value = torch.tensor([int(due), int(self.sigterm_received)], dtype=torch.int32)
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.foreground)
        if value[1]:
            self.preempted = True
        return bool(value.max())

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.sigterm_received = True
        if callable(self._previous_handler):
            self._previous_handler(signum, frame)

    def restore_sigterm(self) -> None:
        """Give SIGTERM back to the handler it had before this manager."""
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None

    def on_rank0(self, action: Callable[[], None], what: str) -> None:
        """Run ``action`` on rank 0 alone (every rank calls this): rank 0 raises its error,
        the other ranks a :class:`CheckpointError` saying rank 0 could not ``what``."""
        failure: BaseException | None = None
        if self.rank == 0:
            try:
                action()
            except BaseException as exc:
                failure = exc
        said = self.from_rank0(None if failure is None else f"{type(failure).__name__}: {failure}")
        if failure is not None:
            raise failure
        if said is not None:
            raise CheckpointError(f"rank 0 could not {what}: {said}")

    def from_rank0(self, value: Any, *, background: bool = False) -> Any:
        """Rank 0's ``value`` on every rank (pickled; small values only)."""
        box = [value]
        group = self.group if background else self.foreground
        dist.broadcast_object_list(box, group=group, group_src=0)
        return box[0]

    def stage(
        self,
        step: int,
        items: Mapping[str, Mapping[str, Any]],
        buffer: Callable[[str], HostBuffer],
    ) -> StagedRank:
        """Capture ``items`` (name: state dict) into ``buffer(name)`` (the tensors) and
        ``buffer(name + ".others")`` (the other leaves): buffers no save in flight uses.
        When this returns, later changes to the state do not change what is written. Never
        raises for the state's sake: the error is kept, and :meth:`write` raises it on
        every rank."""
        staged = StagedRank(step=step, tensors={}, others={})
        try:
            for name, state in items.items():
                flat, _ = flatten_state_dict(dict(state))
                keys = [k for k, v in flat.items() if isinstance(v, torch.Tensor)]
                with torch.no_grad():
                    leaves = [
                        v.to_local() if isinstance(v, DTensor) else v
                        for v in (flat[k] for k in keys)
                    ]
                copied = stage_state(list(leaves), buffer(name))
                tensors: dict[str, torch.Tensor] = {}
                for key, view in zip(keys, _views(copied, leaves), strict=True):
                    value = flat[key]
                    if isinstance(value, DTensor):  # its layout, over the staged local shard
                        tensors[key] = DTensor(view, value._spec, requires_grad=False)  # type: ignore[no-untyped-call]
                    else:
                        tensors[key] = view
                others = {k: v for k, v in flat.items() if not isinstance(v, torch.Tensor)}
                staged.tensors[name] = tensors
                staged.others[name] = stage_state(others, buffer(f"{name}.others"))
        except Exception as exc:  # every rank must learn of it: raised in write()
            staged.error = exc
        return staged

    def write(
        self,
        staged: StagedRank,
        directory: Path,
        *,
        metrics: Mapping[str, float] | None = None,
        wall_time: float | None = None,
        signing_key: bytes | None = None,
        commit: Callable[[Path, int], Path] = commit_step_dir,
    ) -> Path:
        """Write and commit ``staged`` (every rank, collectively; see the module docstring):
        ``commit(temporary, step)`` runs on rank 0 once every file is written (manifest
        last, signed with ``signing_key``). Returns the committed step directory on every
        rank, or raises on every rank (nothing committed, the temporary directory removed)."""
        step = staged.step
        temporary: list[Path] = []
        files: dict[str, Any] = {}
        names = sorted(staged.tensors) if staged.error is None else ["state"]

        def create_directory() -> Path:
            if not temporary:
                temporary.append(create_temporary_step_dir(directory, step))
            return temporary[0]

        def write_own(name: str, where: Path) -> None:
            others = _write_others(where, name, staged.others[name], signed=signing_key is not None)
            files.update(others)

        def finish(
            name: str, last: bool, metadata: Metadata, results: list[list[WriteResult]]
        ) -> None:
            where = temporary[0]
            for file, region in regions_by_file(results).items():
                files[file] = region.file_entry()
            shards = canonical(metadata_to_json(metadata, results))
            signed = signing_key is not None
            files.update(
                write_files(where, [StepFile(shards_index_file(name), shards)], signed=signed)
            )
            if last:
                manifest = build_manifest(
                    step,
                    wall_time=time.time() if wall_time is None else wall_time,
                    metrics=metrics or {},
                    items=names,
                    files=files,
                    signing_key=signing_key,
                )
                body = seal(canonical(manifest))
                write_files(where, [StepFile(MANIFEST_NAME, body)], signed=False)
                commit(where, step)

        try:
            for position, name in enumerate(names):
                last = position == len(names) - 1
                writer = RankWriter(
                    name,
                    staging_error=staged.error,
                    create_directory=create_directory,
                    on_finish=functools.partial(finish, name, last),
                    write_own=functools.partial(write_own, name),
                    signed=signing_key is not None,
                )
                dcp_save(
                    staged.tensors.get(name, {}),
                    storage_writer=writer,
                    planner=DefaultSavePlanner(),
                    process_group=self.group,
                )
        except BaseException as exc:
            if temporary:
                remove_tree(temporary[0])
            _reraise(exc, self.rank, f"save of step {step}")
        return directory / step_dir_name(step)


def _write_others(where: Path, name: str, staged: StagedState, *, signed: bool) -> dict[str, Any]:
    """Rank 0's other leaves of item ``name``, as an ordinary item of the step."""
    data = item_data_file(name, staged)
    entries = write_files(where, [data], signed=signed)
    return entries | write_item_rest(where, name, staged, data, signed=signed)


def _reraise(exc: BaseException, rank: int, what: str) -> NoReturn:
    """Raise what this rank raises for a failure of the collective part: its own original
    error; a :class:`CheckpointError` naming the rank that failed (the same subclass for a
    corrupt file, so that fallbacks treat it alike); a :class:`CheckpointError` saying the
    ranks lost contact when a collective itself failed (a rank died, or timed out)."""
    if not isinstance(exc, CheckpointException):
        if isinstance(exc, RuntimeError):  # gloo: a peer closed the connection, or timeout
            raise CheckpointError(
                f"{what} failed: the ranks lost contact ({type(exc).__name__}: {exc})"
            ) from exc
        raise exc
    failures = exc.failures
    if rank in failures:
        raise failures[rank][0]
    failed = min(failures)
    original = failures[failed][0]
    message = f"{what} failed on rank {failed}: {type(original).__name__}: {original}"
    path, step = getattr(original, "path", None), getattr(original, "step", None)
    if isinstance(original, CheckpointCorruptError):
        raise CheckpointCorruptError(message, path=path, step=step) from None
    raise CheckpointError(message, path=path, step=step) from None


class _TensorLoadPlanner(DefaultLoadPlanner):
    """DCP's planner over the target's tensors only (other leaves are set apart); a tensor
    the step lacks, or whose shape or dtype differs, is refused naming the key, before
    anything is read."""

    def set_up_planner(
        self, state_dict: Any, metadata: Metadata | None = None, is_coordinator: bool = False
    ) -> None:
        super().set_up_planner(state_dict, metadata, is_coordinator)
        self.state_dict = {k: v for k, v in self.state_dict.items() if isinstance(v, torch.Tensor)}
        assert metadata is not None
        for key, value in self.state_dict.items():
            stored = metadata.state_dict_metadata.get(key)
            if not isinstance(stored, TensorStorageMetadata):
                raise CheckpointError(f"{key}: the target has a tensor the step does not hold")
            if stored.size != value.shape or stored.properties.dtype != value.dtype:
                raise CheckpointError(
                    f"{key}: the target is {value.dtype} {list(value.shape)}, the step holds "
                    f"{stored.properties.dtype} {list(stored.size)}"
                )


@contextlib.contextmanager
def _alone() -> Iterator[None]:
    """DCP warns that it assumes one process when it has no group: here that is meant."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        yield


def restore_into(
    source: ItemRead, target: dict[str, Any], *, group: dist.ProcessGroup | None, rank: int
) -> dict[str, Any]:
    """Fill ``target`` from the item of a committed step saved by several ranks (every rank
    of ``group``, collectively, on the caller's thread): tensors in place (DTensors
    resharded to their layout now), other leaves set as rank 0 saved them. Raises on every
    rank when any rank fails (see the module docstring). The step's manifest is read (and
    its signature checked) by the caller. Without ``group``, this process alone reads
    every chunk its target needs (e.g. the whole of each tensor, into plain tensors)."""
    step_dir, manifest, item, read = source
    step = manifest.step
    verify, signed = read.verify, read.signed
    name = shards_index_file(item)
    if name not in manifest.files:
        raise CheckpointError(
            f"step {step} holds no shards of item {item!r}", path=step_dir, step=step
        )
    raw = read_listed(step_dir, manifest, name, verify=verify, signed=signed)
    try:
        metadata = metadata_from_json(
            json.loads(raw), {f: int(e["size"]) for f, e in manifest.files.items()}
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise corrupt_file(step_dir / name, step, str(exc)) from None
    try:
        with _alone() if group is None else contextlib.nullcontext():
            dcp_load(
                target,
                storage_reader=RankReader(
                    step_dir, manifest, metadata, verify=verify, signed=signed
                ),
                planner=_TensorLoadPlanner(),
                process_group=group,
                no_dist=group is None,
            )
    except BaseException as exc:
        _reraise(exc, rank, f"restore of step {step}")
    others = read_item(source)
    _, places = flatten_state_dict(target)
    for key, value in others.items():
        if key in places:
            set_element(target, places[key], value)
    return target
