"""Restore: one item of one committed step back as a state tree. The read path, in order:

1) lease: a shared ``flock`` on the step directory (``locking.reader_lease``): retention and
   ``delete`` leave a leased step alone; a step deleted before the lease held is answered
   with the next newest (or :class:`CheckpointNotFoundError` for a step asked by number)
2) manifest (``manifest.read_manifest``): its own checksum, its fields, the signature
3) index (``index.read_index``): the item's tree and array table, verified and checked
4) map and verify (``_verified_files``): the data file mapped (or read), its digest computed
   on the side thread meanwhile; per array for partial and in-place restores
5) build arrays (``_array_building``): views of the verified bytes, CUDA streamed
6) unpickle (``full_restore.item_objects``): restricted to the allow-list unless
   trusted
7) decode (``tree.decode_tree``): the state tree

Steps 3-7 run in one of three readers, chosen by the request: ``full_restore.read_item``
(the whole item), ``partial_restore.read_selected`` (``select``), ``_fill.restore_into``
(``target``, filled in place). Inspection (``inspection.py``) stops after 3 or checks
files only. Which step: the catalogue (``catalog.py``); the fallback to older intact steps:
``_fallback.py``.

Cost: the lease and the manifest are one ``open``, one ``flock`` and one small read; the
rest is the reader's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alphatriangle.data.checkpoint._devices import DeviceMap
from alphatriangle.data.checkpoint._fallback import newest_intact
from alphatriangle.data.checkpoint._fill import restore_into
from alphatriangle.data.checkpoint.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    StepGoneError,
)
from alphatriangle.data.checkpoint.full_restore import ItemRead, ReadOptions, read_item
from alphatriangle.data.checkpoint.layout import shards_index_file, step_dir_name
from alphatriangle.data.checkpoint.locking import reader_lease, step_not_found
from alphatriangle.data.checkpoint.manifest import read_manifest
from alphatriangle.data.checkpoint.mapping import PinnedChunks
from alphatriangle.data.checkpoint.options import CheckpointManagerOptions
from alphatriangle.data.checkpoint.partial_restore import Selector, read_selected

__all__ = ["RestoreRequest", "restore_intact", "restore_newest", "restore_request", "restore_step"]

_RESTORE_ATTEMPTS = 16


@dataclass(frozen=True)
class RestoreRequest:
    """What one restore asks for (passed through its retries and fallbacks)."""

    read: ReadOptions
    select: list[Selector] | None
    item: str = "state"
    target: Any = None  # restore(target=...): filled in place
    ranks: Any = None  # the manager's RankCheckpointer (with a process group): collective


def restore_request(
    options: CheckpointManagerOptions,
    *,
    map_location: Any,
    weights_only: bool | None,
    select: Sequence[Selector] | Selector | None,
    item: str,
    target: Any,
    ranks: Any,
) -> RestoreRequest:
    """``restore``'s arguments checked and made one request (``weights_only`` None: the
    option's); ValueError for a combination that cannot be honoured."""
    if isinstance(select, (str, int)):
        select = [select]  # one key, never read letter by letter
    if target is not None and (select is not None or map_location is not None):
        raise ValueError("target is filled where its tensors are: no select, no map_location")
    read = ReadOptions(
        verify=options.verify_on_restore,
        weights_only=options.weights_only if weights_only is None else weights_only,
        signing_key=options.signing_key,
        map_location=DeviceMap(map_location),
    )
    return RestoreRequest(
        read,
        None if select is None else list(select),
        item,
        target,
        ranks,
    )


def restore_step(
    step_dir: Path,
    step: int,
    request: RestoreRequest,
    options: CheckpointManagerOptions,
    pinned: PinnedChunks,
) -> Any:
    """Steps 1-7 for one step directory. Raises :class:`StepGoneError` when the step went
    away before the lease held, :class:`CheckpointNotFoundError` when it has no such item,
    and what the readers raise."""
    with reader_lease(step_dir):
        manifest = read_manifest(step_dir, step, signing_key=request.read.signing_key)
        if request.item not in manifest.items:
            raise CheckpointNotFoundError(
                f"step {step} holds no item {request.item!r} (it holds {list(manifest.items)})",
                path=step_dir,
                step=step,
            )
        source = ItemRead(step_dir, manifest, request.item, request.read)
        if shards_index_file(request.item) in manifest.files:  # saved by several ranks
            return _restore_shards(source, request)
        if request.target is not None:
            return restore_into(request.target, source)
        if request.select is not None:
            return read_selected(source, request.select)
        return read_item(source, mode=options.restore_mode, pinned=pinned)


def _restore_shards(source: ItemRead, request: RestoreRequest) -> Any:
    """An item saved by several ranks: DCP's planner fills the target's tensors (resharded to
    the layout they have now), collectively when the manager has a process group."""
    if request.target is None or request.select is not None:
        step = source.manifest.step
        raise CheckpointError(
            f"step {step} was saved by several ranks: restore it with target=... (a "
            "state dict of the tensors to fill)",
            path=source.step_dir,
            step=step,
        )
    from alphatriangle.data.checkpoint._distributed import restore_into as restore_shards

    ranks = request.ranks
    return restore_shards(
        source,
        request.target,
        group=None if ranks is None else ranks.foreground,  # the caller's thread
        rank=0 if ranks is None else ranks.rank,
    )


def restore_newest(
    directory: Path,
    step: int | None,
    request: RestoreRequest,
    options: CheckpointManagerOptions,
    pinned: PinnedChunks,
    *,
    steps_holding: Callable[[str], list[int]],
    reload: Callable[[], None],
) -> Any:
    """:func:`restore_step` of ``step``, or of the newest step holding the item when None
    (``steps_holding`` lists them, newest first): a newest step deleted before its lease
    held is answered by rescanning (``reload``) and reading the next newest."""
    for _ in range(_RESTORE_ATTEMPTS):
        if step is not None:
            candidate: int | None = step
        else:
            holding = steps_holding(request.item)
            candidate = holding[0] if holding else None
        if candidate is None:
            raise CheckpointNotFoundError(
                f"no committed checkpoint holding {request.item!r} in {directory}",
                path=directory,
            )
        step_dir = directory / step_dir_name(candidate)
        try:
            return restore_step(step_dir, candidate, request, options, pinned)
        except StepGoneError:
            if step is not None:
                raise step_not_found(directory, step) from None
            reload()
    raise CheckpointError(
        f"the newest step of {directory} was deleted {_RESTORE_ATTEMPTS} times "
        "before it could be read",
        path=directory,
    )


def restore_intact(steps: list[int], restore: Callable[[int | None], Any]) -> Any:
    """``restore(fallback=True)``: ``restore`` of the newest of ``steps`` (newest first)
    that is intact, each corrupt newer one skipped and logged as an error; when none is, the
    newest one's corruption is raised (``restore(None)`` when there is no step at all)."""
    found = newest_intact(
        steps,
        restore,
        skipped="skipping corrupt step %d: %s",
        found="restored step %d, the newest intact one: newer steps are corrupt",
        passes=(CheckpointNotFoundError,),  # deleted by retention since the listing
    )
    return restore(None) if found is None else found[1]
