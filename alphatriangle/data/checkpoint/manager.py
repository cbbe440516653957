"""The checkpoint manager: orchestrates the save pipeline; owns no format, naming or policy."""

from __future__ import annotations

import logging
import numbers
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch

from alphatriangle.data.checkpoint._devices import DeviceMap
from alphatriangle.data.checkpoint._fill import restore_into
from alphatriangle.data.checkpoint._interrupts import holding, interrupts_deferred
from alphatriangle.data.checkpoint._lifecycle import on_drop, weakly
from alphatriangle.data.checkpoint.commit import (
    commit_step_dir,
    create_directory_durably,
    create_temporary_step_dir,
    remove_tree,
    sweep_leftovers,
    trash_step_dir,
)
from alphatriangle.data.checkpoint.errors import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointNotFoundError,
    StepExistsError,
)
from alphatriangle.data.checkpoint.format import write_step_files
from alphatriangle.data.checkpoint.layout import scan_steps, step_dir_name
from alphatriangle.data.checkpoint.locking import (
    StepGoneError,
    WriterLock,
    reader_lease,
    try_take_step,
)
from alphatriangle.data.checkpoint.mapping import PinnedChunks
from alphatriangle.data.checkpoint.options import CheckpointManagerOptions
from alphatriangle.data.checkpoint.reading import (
    Selector,
    read_array_metadata,
    read_item,
    read_manifest,
    read_selected,
    verify_step,
)
from alphatriangle.data.checkpoint.retention import RetentionPolicy, StepInfo, best_of
from alphatriangle.data.checkpoint.save_decision import SaveContext
from alphatriangle.data.checkpoint.staging import (
    StagedState,
    StagingPool,
    StagingSlot,
    stage_state,
)
from alphatriangle.data.checkpoint.sync import MlflowSync, UploadStatus
from alphatriangle.data.checkpoint.writer import BackgroundWriter, SaveHandle

__all__ = ["CheckpointManager"]

logger = logging.getLogger(__name__)

DEFAULT_ITEM = "state"
_ITEM_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,127}$")  # as reading.py admits
_RESTORE_ATTEMPTS = 16
_BLOCKED_WARNING_MS = 20.0  # shorter waits are scheduling jitter, not a bottleneck


@dataclass(frozen=True)
class _Reading:
    """How one restore reads (passed through its retries and fallbacks)."""

    map_location: Any
    weights_only: bool | None
    select: list[Selector] | None
    item: str = "state"
    target: Any = None  # restore(target=...): filled in place


class CheckpointManager:
    """Saves state trees as numbered steps in one directory, and restores them.

    A save runs 1) stage, on the caller's thread: tensors and arrays copied into a reusable
    host buffer, other leaves pickled; ``save`` returns here 2) write, on the background
    writer thread: every file into a hidden temporary directory, fsynced, manifest last
    3) commit: the directory renamed to ``step_<N>`` and its parent fsynced 4) retain: the
    retention policy decides, the deleter removes what it does not keep.

    Guarantees: what ``restore`` returns equals the state when ``save`` returned; a step is
    visible whole or not at all, and durable once its handle's ``committed`` is done; a crash
    at any instant loses no committed step (leftovers are swept at the next open); every file
    is checksummed and verified on restore; a background failure is raised, with its original
    type, at the next ``save``, ``wait_until_finished`` or ``close``; one writer per
    directory, readers (``read_only=True``) any number.

    The public methods may be called from several threads: saves are serialised, restores run
    concurrently with them.
    """

    def __init__(
        self,
        directory: str | Path,
        options: CheckpointManagerOptions | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = Path(directory)
        self.options = options if options is not None else CheckpointManagerOptions()
        self.skipped_steps: list[int] = []
        self._clock = clock
        self._state_lock = threading.RLock()
        self._save_lock = threading.Lock()
        self._infos: dict[int, StepInfo | None] = {}  # committed steps; info once read
        self._in_flight: set[int] = set()
        self._last_saved: tuple[int, float] | None = None  # step, wall time: save policies
        self._warned_incomplete: set[Path] = set()
        self._closed = False
        self._released = False  # the writer stopped and the lock released: close is done
        self._close_lock = threading.Lock()
        self._lock: WriterLock | None = None
        self._writer: BackgroundWriter | None = None
        self._pool: StagingPool | None = None
        if not self.options.read_only:
            create_directory_durably(self.directory)
            self._lock = WriterLock(self.directory, self.options.lock_timeout_s)
            self._lock.acquire()
            try:
                sweep_leftovers(self.directory)
            except BaseException:
                self._lock.release()
                raise
            self._pool = StagingPool(self.options.max_pending)
            self._writer = BackgroundWriter(f"checkpoint-writer:{self.directory.name}")
        self.reload()
        self._sync: MlflowSync | None = None
        self._pinned = PinnedChunks()  # allocated on the first restore to CUDA
        if self.options.mlflow is not None and self._writer is not None:
            self._sync = MlflowSync(
                self.directory,
                self.options.mlflow,
                committed_steps=weakly(self.all_steps, []),
                best_step=weakly(self.best_step, None),
                on_failure=self._writer.record,
            )
        if self._lock is not None:
            # A manager dropped without close() (a notebook cell run again) frees its lock.
            self._forget_drop = on_drop(self, self.directory, self._writer, self._sync, self._lock)

    # -- context manager ------------------------------------------------------------------

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
            return
        try:
            self.close()
        except Exception:
            # The exception already on its way out wins; this one must not vanish unseen.
            logger.exception("closing %s after an error also failed", self.directory)

    # -- saving ---------------------------------------------------------------------------

    def should_save(self, step: int) -> bool:
        """Whether ``save(step, ...)`` would write without ``force``: the save policy says the
        step is due, it is not committed or in flight, and this manager can write."""
        if self.options.read_only or self._closed:
            return False
        with self._state_lock:
            if step in self._infos or step in self._in_flight:
                return False
        return self._due(step)

    def _due(self, step: int) -> bool:
        with self._state_lock:
            last = self._last_saved
        context = SaveContext(
            step=step,
            now=self._clock(),
            last_step=None if last is None else last[0],
            last_time=None if last is None else last[1],
        )
        return self.options.save_decision().should_save(context)

    def saving_in_progress(self) -> bool:
        """Whether a save is staged and not yet committed (or failed)."""
        with self._state_lock:
            return bool(self._in_flight)

    @interrupts_deferred
    def save(
        self,
        step: int,
        state: Any = None,
        *,
        items: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        force: bool = False,
        replace: bool = False,
    ) -> SaveHandle | None:
        """Snapshot ``state`` (the item ``"state"``), or several named ``items`` (e.g.
        ``{"checkpoint": ..., "buffer": ...}``, each a state tree with files of its own in
        the step), as ``step``, and write it in the background.

        Returns a :class:`SaveHandle` (``staged`` is already done), or None when the step is
        not due (the save policy) or was skipped because the queue is full
        (``on_full="skip"``). ``force`` writes a step that is not due (as Orbax's ``force``:
        it never overwrites); ``replace`` overwrites a committed step (and implies
        ``force``). Raises :class:`StepExistsError` for a step committed (without
        ``replace``) or in flight, the pending background failure, or whatever pickling a
        leaf raises. When the save must wait for an earlier one to finish, a warning gives
        the wait in ms: checkpointing has become the bottleneck.
        """
        writer, pool = self._writable()
        writer.raise_error(clear=True)
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        trees = _items(state, items)
        with self._state_lock:
            exists = step in self._infos
            if (exists and not replace) or step in self._in_flight:
                raise StepExistsError(
                    f"step {step} already exists in {self.directory}"
                    + ("" if exists else " (in flight)")
                    + "; pass replace=True to overwrite a committed step",
                    path=self.directory / step_dir_name(step),
                    step=step,
                )
        if not (force or replace) and not self._due(step):
            return None
        checked_metrics = _check_metrics(metrics)
        with holding(self._save_lock):
            # close() sets _closed, then takes this lock to stop the writer: a save that got
            # here after it must not queue a job that nothing would run.
            self._check_open()
            with self._state_lock:
                if (step in self._infos and not replace) or step in self._in_flight:
                    raise StepExistsError(
                        f"step {step} already exists in {self.directory}",
                        path=self.directory / step_dir_name(step),
                        step=step,
                    )
            waiting_since = time.perf_counter()
            slot = pool.acquire(block=self.options.on_full == "wait")
            waited_ms = (time.perf_counter() - waiting_since) * 1000
            if waited_ms >= _BLOCKED_WARNING_MS:
                logger.warning(
                    "save of step %d waited %.0f ms for earlier saves to finish: "
                    "checkpointing is the bottleneck (save less often, or raise max_pending)",
                    step,
                    waited_ms,
                )
            if slot is None:
                self.skipped_steps.append(step)
                logger.warning(
                    "skipped checkpoint of step %d: %d saves still in flight (on_full='skip')",
                    step,
                    self.options.max_pending,
                )
                return None
            queued = False
            try:  # until the job is queued, any exception (Ctrl-C too) gives everything back
                if writer.has_error():
                    # The save this one waited for failed: report it now, not one save later.
                    writer.raise_error(clear=True)
                staged = {
                    name: stage_state(tree, slot.buffer(name)) for name, tree in trees.items()
                }
                handle = SaveHandle(step)
                handle.staged.set_result(None)
                with self._state_lock:
                    self._in_flight.add(step)
                info = StepInfo(step, self._clock(), checked_metrics, frozenset(trees))
                writer.submit(
                    lambda: self._write_step(info, staged, replace),
                    handle,
                    lambda: self._finish_save(info.step, slot, pool),
                    lambda: self._after_commit(info.step),
                )
                queued = True
                with self._state_lock:
                    self._last_saved = (step, info.wall_time)
            finally:
                if not queued:
                    self._finish_save(step, slot, pool)
            return handle

    def _finish_save(self, step: int, slot: StagingSlot, pool: StagingPool) -> None:
        pool.release(slot)
        with self._state_lock:
            self._in_flight.discard(step)

    def _write_step(self, info: StepInfo, staged: Mapping[str, StagedState], replace: bool) -> Path:
        """Runs on the writer thread: 2) write 3) commit. Retention (4) runs after the
        handle completes: a commit never waits on deletions."""
        temporary = create_temporary_step_dir(self.directory, info.step)
        try:
            write_step_files(
                temporary,
                info.step,
                staged,
                metrics=info.metrics,
                wall_time=info.wall_time,
                signing_key=self.options.signing_key,
            )
            final = self._commit(temporary, info.step, replace)
        except BaseException:
            remove_tree(temporary)
            raise
        with self._state_lock:
            self._infos[info.step] = info  # _finish_save then drops it from _in_flight
        return final

    def _commit(self, temporary: Path, step: int, replace: bool) -> Path:
        final = self.directory / step_dir_name(step)
        if not (replace and final.exists()):
            return commit_step_dir(temporary, step)
        committed: list[Path] = []

        def replace_unread() -> bool:
            with try_take_step(final) as taken:
                if taken:
                    committed.append(commit_step_dir(temporary, step, replace=True))
            return taken

        self._without_readers(final, step, "replace", replace_unread)
        return committed[0] if committed else commit_step_dir(temporary, step)

    def _without_readers(
        self, step_dir: Path, step: int, action: str, attempt: Callable[[], bool]
    ) -> None:
        """Retry ``attempt`` (which acts only when no reader holds ``step_dir``) for up to
        ``lock_timeout_s``; then raise :class:`CheckpointError`. Returns as soon as it acted
        or the step is gone."""
        deadline = time.monotonic() + self.options.lock_timeout_s
        while not attempt():
            if not step_dir.exists():
                return  # gone meanwhile (retention took it)
            if time.monotonic() > deadline:
                raise CheckpointError(
                    f"cannot {action} step {step}: readers held it for "
                    f"{self.options.lock_timeout_s:g} s",
                    path=step_dir,
                    step=step,
                )
            time.sleep(0.01)

    # -- deleting -------------------------------------------------------------------------

    def delete(self, step: int) -> None:
        """Delete a committed step now (for a rollback: restore an older step, delete the
        newer ones, train on and save them again). Atomic like retention's deletions (renamed
        out of sight, then removed), never under a reader: waits up to ``lock_timeout_s``
        for readers to let go. Raises :class:`CheckpointNotFoundError` for a step that is
        not committed, :class:`StepExistsError` for a step in flight, and
        :class:`CheckpointError` when readers held it throughout."""
        self._writable()
        step_dir = self.directory / step_dir_name(step)
        with self._state_lock:
            if step in self._in_flight:
                raise StepExistsError(f"step {step} is being saved", path=step_dir, step=step)
            if step not in self._infos:
                raise CheckpointNotFoundError(
                    f"step {step} not found in {self.directory}", path=step_dir, step=step
                )
        self._without_readers(step_dir, step, "delete", lambda: self._delete_step(step))
        with self._state_lock:
            self._infos.pop(step, None)
            deleted_last = self._last_saved is not None and self._last_saved[0] == step
        if deleted_last:  # policies now count from the newest step that is left
            newest = self._newest_committed()
            with self._state_lock:
                self._last_saved = newest

    # -- retention ------------------------------------------------------------------------

    def _after_commit(self, step: int) -> None:
        """On the writer thread, after ``step`` committed: 4) retain 5) sync (the upload
        itself runs on the uploader's thread)."""
        if self._sync is not None:
            self._sync.enqueue(step)  # before retention: a pending upload is protected
        self._apply_retention()

    def _apply_retention(self) -> None:
        with self._state_lock:
            steps = sorted(self._infos)
            protected = set(self._in_flight)
        if self._sync is not None and self._sync.options.keep_until_uploaded:
            protected |= self._sync.pending()
        if len(steps) <= 1:
            return
        keep = self.plan_retention(steps=steps) | protected
        for step in steps:
            if step not in keep and not self._delete_step(step):
                logger.info("step %d is being read; retention deletes it later", step)

    def plan_retention(
        self, policy: RetentionPolicy | None = None, *, steps: list[int] | None = None
    ) -> set[int]:
        """The committed steps that ``policy`` (the configured one when None) keeps, with
        what no policy may delete: the newest step, the newest step holding each item, and
        steps whose manifest cannot be read. Decides only; deletes nothing."""
        steps = self.all_steps() if steps is None else steps
        if not steps:
            return set()
        # Manifests are read (once per step, then cached) whatever the policy: only they say
        # which items a step holds.
        infos, unreadable = self._step_infos(steps)
        keep = (policy or self.options.retention).keep(infos, self._clock())
        newest_per_item = {item: info.step for info in infos for item in info.items}
        return keep | unreadable | {steps[-1]} | set(newest_per_item.values())

    def _step_infos(self, steps: list[int]) -> tuple[list[StepInfo], set[int]]:
        """StepInfo of each step: wall time, metrics, items (manifests are read once per
        step, then cached); steps whose manifest cannot be read are returned apart, and
        retention never deletes them."""
        infos, unreadable = [], set()
        for step in steps:
            with self._state_lock:
                info = self._infos.get(step)
            if info is None:
                try:
                    manifest = read_manifest(self.directory / step_dir_name(step), step)
                except CheckpointCorruptError as exc:
                    logger.error(
                        "retention keeps step %d, whose manifest is unreadable: %s", step, exc
                    )
                    unreadable.add(step)
                    continue
                info = StepInfo(
                    step, manifest.wall_time, dict(manifest.metrics), frozenset(manifest.items)
                )
                with self._state_lock:
                    if step in self._infos:
                        self._infos[step] = info
            infos.append(info)
        return infos, unreadable

    def _delete_step(self, step: int) -> bool:
        """Take ``step`` out of sight and remove it; False when a reader holds it (or it is
        gone already)."""
        step_dir = self.directory / step_dir_name(step)
        with try_take_step(step_dir) as taken:
            if not taken:
                return False
            trash = trash_step_dir(step_dir, step)
        with self._state_lock:
            self._infos.pop(step, None)
        remove_tree(trash)
        return True

    def best_step(self) -> int | None:
        """The best committed step by the configured ranking (``best_metric``/``best_mode``,
        else the retention's ``KeepBest``); None when no step has a finite value for it.
        Raises ValueError when no ranking is configured."""
        ranking = self.options.best_ranking()
        if ranking is None:
            raise ValueError(
                "best_step needs a ranking: set best_metric in the options, "
                "or use a KeepBest in retention"
            )
        infos, _ = self._step_infos(self.all_steps())
        best = best_of(infos, ranking.metric, ranking.mode)
        return best[0] if best else None

    # -- restoring ------------------------------------------------------------------------

    @interrupts_deferred
    def restore(
        self,
        step: int | None = None,
        *,
        map_location: Any = None,
        fallback: bool = False,
        weights_only: bool | None = None,
        select: Sequence[Selector] | Selector | None = None,
        item: str = DEFAULT_ITEM,
        target: Any = None,
    ) -> Any:
        """The state tree saved as ``step`` (the newest committed step when None).

        ``item`` names which item of the step (``"state"`` by default); with ``step=None``,
        the newest committed step that holds it is read.

        Tensors come back on the device they were saved from, or where ``map_location``
        sends them, with ``torch.load``'s meaning: a device or device name, a dict of saved
        device to device (``{"cuda:1": "cuda:0"}``), or a callable ``(storage, location)``;
        another form is a ``TypeError`` naming ``map_location``.
        Raises :class:`CheckpointNotFoundError` when there is no such step, and
        :class:`CheckpointCorruptError` naming the file when verification fails. A step being
        read is never deleted under the reader; if the newest step is deleted before the read
        begins, the next newest is read instead.

        With ``fallback`` (for auto-resume; only with ``step=None``), a corrupt newest step
        is skipped for the newest intact one, each skip logged as an error naming the file;
        if no step is intact, the newest step's :class:`CheckpointCorruptError` is raised.

        Pickled objects (default: the option ``weights_only``): with None, unpickled
        through an allow-list (``add_safe_globals`` extends it); a global outside it raises
        :class:`UnsafeObjectError` naming it. ``weights_only=True`` unpickles nothing (a step
        holding pickled objects raises :class:`WeightsOnlyError` naming them);
        ``weights_only=False`` unpickles anything, as does a step whose signature verifies.
        With a ``signing_key`` in the options, an unsigned or tampered step raises
        :class:`CheckpointSignatureError` (a corrupt step, for ``fallback``).

        With ``target`` (a tree shaped like the saved one: same keys, lengths, shapes and
        dtypes), its tensors and arrays are filled in place, each on its own device, with no
        new allocation for them; its other leaves are set; ``target`` is returned (a tuple
        is rebuilt). A key, length, shape or dtype that differs raises
        :class:`CheckpointError` naming the key, before anything is written.

        With ``select`` (top-level keys, or tuples of keys for deeper paths, e.g.
        ``["model"]``; a bare ``"model"`` is one key), only those subtrees are read, returned
        as nested dicts along their paths; each of their arrays is read alone and verified by
        its own checksum.
        """
        if fallback and step is not None:
            raise ValueError("fallback restores the newest intact step: pass step=None")
        if weights_only is None:
            weights_only = self.options.weights_only
        if isinstance(select, (str, int)):
            select = [select]  # one key, never read letter by letter
        if target is not None and (select is not None or map_location is not None):
            raise ValueError("target is filled where its tensors are: no select, no map_location")
        reading = _Reading(
            DeviceMap(map_location),
            weights_only,
            None if select is None else list(select),
            item,
            target,
        )
        if not fallback:
            return self._restore(step, reading)
        first_error: CheckpointCorruptError | None = None
        for candidate in self._steps_holding(item):
            try:
                state = self._restore(candidate, reading)
            except CheckpointCorruptError as exc:
                logger.error("skipping corrupt step %d: %s", candidate, exc)
                first_error = first_error or exc
                continue
            except CheckpointNotFoundError:
                continue  # deleted by retention since the listing: an older one follows
            if first_error is not None:
                logger.error(
                    "restored step %d, the newest intact one: newer steps are corrupt",
                    candidate,
                )
            return state
        if first_error is not None:
            raise first_error
        return self._restore(None, reading)  # nothing committed: the usual error

    def _steps_holding(self, item: str) -> list[int]:
        """Committed steps, newest first, that hold ``item`` (or whose manifest cannot say:
        restoring them reports why)."""
        steps = self.all_steps()
        if item == DEFAULT_ITEM and not any(
            info is not None and info.items != {DEFAULT_ITEM} for info in self._infos.values()
        ):
            return steps[::-1]
        infos, unreadable = self._step_infos(steps)
        holding = {info.step for info in infos if item in info.items} | unreadable
        return [s for s in reversed(steps) if s in holding]

    def _restore(self, step: int | None, reading: _Reading) -> Any:
        self._check_open()
        for _ in range(_RESTORE_ATTEMPTS):
            if step is not None:
                candidate: int | None = step
            else:
                holding = self._steps_holding(reading.item)
                candidate = holding[0] if holding else None
            if candidate is None:
                raise CheckpointNotFoundError(
                    f"no committed checkpoint holding {reading.item!r} in {self.directory}",
                    path=self.directory,
                )
            step_dir = self.directory / step_dir_name(candidate)
            try:
                with reader_lease(step_dir):
                    key = self.options.signing_key
                    manifest = read_manifest(step_dir, candidate, signing_key=key)
                    if reading.item not in manifest.items:
                        raise CheckpointNotFoundError(
                            f"step {candidate} holds no item {reading.item!r} "
                            f"(it holds {list(manifest.items)})",
                            path=step_dir,
                            step=candidate,
                        )
                    verify = self.options.verify_on_restore
                    if reading.target is not None:
                        return restore_into(
                            reading.target,
                            step_dir,
                            manifest,
                            reading.item,
                            verify=verify,
                            weights_only=reading.weights_only,
                            signing_key=key,
                        )
                    if reading.select is not None:
                        return read_selected(
                            step_dir,
                            manifest,
                            reading.item,
                            reading.select,
                            verify=verify,
                            map_location=reading.map_location,
                            weights_only=reading.weights_only,
                            signing_key=key,
                        )
                    return read_item(
                        step_dir,
                        manifest,
                        reading.item,
                        verify=verify,
                        map_location=reading.map_location,
                        weights_only=reading.weights_only,
                        signing_key=key,
                        mode=self.options.restore_mode,
                        pinned=self._pinned,
                    )
            except StepGoneError:
                if step is not None:
                    raise CheckpointNotFoundError(
                        f"step {step} not found in {self.directory}", path=step_dir, step=step
                    ) from None
                self.reload()
        raise CheckpointError(
            f"the newest step of {self.directory} was deleted {_RESTORE_ATTEMPTS} times "
            "before it could be read",
            path=self.directory,
        )

    def array_metadata(self, step: int | None = None, *, item: str = DEFAULT_ITEM) -> Any:
        """The tree of ``item`` in ``step`` (the newest when None) with each tensor and array
        replaced by its :class:`ArrayMetadata` (framework, dtype, shape, bytes, device) and
        each pickled leaf by a :class:`PickledObject`: read from the index alone, without
        reading array data or unpickling anything. KeyError when the step has no ``item``."""
        self._check_open()
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointNotFoundError(
                f"no committed checkpoint in {self.directory}", path=self.directory
            )
        step_dir = self.directory / step_dir_name(step)
        key = self.options.signing_key
        try:
            with reader_lease(step_dir):
                manifest = read_manifest(step_dir, step, signing_key=key)
                return read_array_metadata(step_dir, manifest, item, signing_key=key)
        except StepGoneError:
            raise CheckpointNotFoundError(
                f"step {step} not found in {self.directory}", path=step_dir, step=step
            ) from None

    def verify(self, step: int) -> None:
        """Check every file of ``step`` (sizes, checksums, signature when a key is set) and
        every item's index and tree, without unpickling anything or building a tensor.
        Raises :class:`CheckpointCorruptError` naming the file, or
        :class:`CheckpointNotFoundError`."""
        self._check_open()
        step_dir = self.directory / step_dir_name(step)
        key = self.options.signing_key
        try:
            with reader_lease(step_dir):
                manifest = read_manifest(step_dir, step, signing_key=key)
                verify_step(step_dir, manifest, signing_key=key)
        except StepGoneError:
            raise CheckpointNotFoundError(
                f"step {step} not found in {self.directory}", path=step_dir, step=step
            ) from None

    def metadata(self, step: int) -> dict[str, Any]:
        """The manifest of ``step``: step, wall time, metrics (floats, NaN and infinities
        included), items, files with sizes and checksums, library versions."""
        self._check_open()
        step_dir = self.directory / step_dir_name(step)
        try:
            with reader_lease(step_dir):
                manifest = read_manifest(step_dir, step)
                return {**manifest.raw, "metrics": dict(manifest.metrics)}
        except StepGoneError:
            raise CheckpointNotFoundError(
                f"step {step} not found in {self.directory}", path=step_dir, step=step
            ) from None

    # -- listing --------------------------------------------------------------------------

    def all_steps(self) -> list[int]:
        """Committed steps, ascending. A reader rescans the directory on every call."""
        if self.options.read_only:
            self.reload()
        with self._state_lock:
            return sorted(self._infos)

    def latest_step(self) -> int | None:
        """The newest committed step, or None."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def reload(self) -> None:
        """Rescan the directory for committed steps. A step-named directory without a
        manifest (empty, or copied in without one) is no step: it is left alone and named in
        a warning (once)."""
        with self._state_lock:  # held across the scan: a commit meanwhile is never lost
            scan = scan_steps(self.directory)
            self._infos = {step: self._infos.get(step) for step in scan.steps}
            for path in scan.incomplete:
                if path not in self._warned_incomplete:
                    self._warned_incomplete.add(path)
                    logger.warning(
                        "%s has no manifest: it is not a committed step, and is left alone",
                        path,
                    )
            if self._last_saved is None and not self.options.read_only:
                self._last_saved = self._newest_committed()

    def _newest_committed(self) -> tuple[int, float] | None:
        """The newest committed step and its wall time (what save policies count from
        before this manager's first save)."""
        with self._state_lock:
            if not self._infos:
                return None
            newest = max(self._infos)
        try:
            manifest = read_manifest(self.directory / step_dir_name(newest), newest)
        except CheckpointCorruptError:
            return (newest, float("-inf"))  # due by time; restoring it will say what is wrong
        return (newest, manifest.wall_time)

    # -- finishing ------------------------------------------------------------------------

    @interrupts_deferred
    def wait_until_finished(self) -> None:
        """Block until every save in flight is committed (or failed) and retention has run;
        raise a pending background failure. Every thread that waits sees the failure, and
        so does the next ``save`` (unless its thread already saw it here)."""
        self._check_open()
        if self._writer is not None:
            self._writer.wait_idle()
            self._writer.raise_error(clear=False)

    # -- MLflow sync ----------------------------------------------------------------------

    def _synced(self) -> MlflowSync:
        self._check_open()
        if self._sync is None:
            raise CheckpointError(
                "MLflow sync is off: open a writer with CheckpointManagerOptions(mlflow=...)",
                path=self.directory,
            )
        return self._sync

    def wait_for_uploads(self, timeout: float | None = None) -> bool:
        """Wait for the saves in flight to commit, then up to ``timeout`` seconds more for
        every pending upload; whether all were uploaded (if not, a warning says what is left
        and why). Never raises for the network."""
        sync = self._synced()
        if self._writer is not None:
            self._writer.wait_idle()
        return sync.drain(timeout)

    def mlflow_run_id(self) -> str:
        """The MLflow run the steps go to: the configured one, else the active one, else the
        newest run named ``run_name``, else a new one; resolved once (it may reach the
        server), then kept in the upload ledger."""
        return self._synced().run_id()

    def pending_uploads(self) -> list[int]:
        """Committed steps not yet uploaded (those in the ledger)."""
        return sorted(self._synced().pending())

    def upload_status(self) -> UploadStatus:
        """What is not uploaded yet and why (each step's permanent failure, the transient one
        being retried, other files); also after ``close``, for a final report."""
        if self._sync is None:
            return self._synced().status()  # raises: sync is off
        return self._sync.status()

    def remote_steps(self, timeout: float | None = None) -> list[int]:
        """The complete steps on the MLflow server (their manifest uploaded); transient
        failures are retried, for at most ``timeout`` seconds when given."""
        return self._synced().remote_steps(timeout)

    def upload_file(self, path: Path, artifact_path: str) -> None:
        """Upload one file beside the steps (a run's configuration, say) on a thread of its
        own, retried like steps; a failure never reaches the caller unless
        ``raise_on_permanent_failure`` is set (then at the next ``save``/
        ``wait_until_finished``); ``upload_status`` reports it. Never blocks the caller."""
        sync = self._synced()
        writer, _ = self._writable()
        threading.Thread(
            target=sync.upload_file,
            args=(path, artifact_path, writer.record),
            name="mlflow-upload-file",
            daemon=True,
        ).start()

    def fetch(self, step: int | None = None) -> int:
        """Download a complete remote step (the newest when None) into this directory
        through the usual temporary-directory commit, verified before it becomes visible
        (strict reading, and the signature when a key is set); return its step. A step
        already here is not downloaded again. With ``step=None``, a corrupt or incomplete
        remote step is skipped for the previous one, loudly; when none is intact, the newest
        one's error is raised. :class:`CheckpointNotFoundError` when the server has none."""
        sync = self._synced()
        self._writable()
        remote = sync.remote_steps()
        if step is not None and step not in remote:
            raise CheckpointNotFoundError(
                f"step {step} is not complete on the MLflow server (it has {remote})",
                path=self.directory,
                step=step,
            )
        candidates = [step] if step is not None else sorted(remote, reverse=True)
        first_error: CheckpointCorruptError | None = None
        for candidate in candidates:
            with self._state_lock:
                if candidate in self._infos:
                    return candidate
            try:
                self._download(sync, candidate)
            except CheckpointCorruptError as exc:
                if step is not None:
                    raise
                logger.error(
                    "remote step %d is corrupt, trying the previous one: %s", candidate, exc
                )
                first_error = first_error or exc
                continue
            if first_error is not None:
                logger.error("fetched step %d, the newest intact remote step", candidate)
            return candidate
        if first_error is not None:
            raise first_error
        raise CheckpointNotFoundError(
            f"the MLflow run holds no complete step for {self.directory}", path=self.directory
        )

    def _download(self, sync: MlflowSync, step: int) -> None:
        temporary = create_temporary_step_dir(self.directory, step)
        try:
            sync.download(step, temporary)
            key = self.options.signing_key
            manifest = read_manifest(temporary, step, signing_key=key)
            verify_step(temporary, manifest, signing_key=key)
            for path in temporary.iterdir():
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            commit_step_dir(temporary, step)
        except BaseException:
            remove_tree(temporary)
            raise
        with self._state_lock:
            self._infos[step] = None

    @interrupts_deferred
    def close(self) -> None:
        """Finish in-flight saves, stop the writer, release the lock; raise a pending
        background failure. Idempotent; a concurrent ``close`` returns only once the writer
        is done too, and is raised the failure as well. A Ctrl-C while it waits for the
        writer leaves the manager closed to saves, its lock held until its writer is done:
        ``close()`` again finishes (so does the end of the process)."""
        with holding(self._close_lock):
            if not self._released:
                self._closed = True
                try:
                    if self._writer is not None:
                        with holding(self._save_lock):  # a save past its checks submits first
                            self._writer.stop()
                    if self._sync is not None:
                        self._sync.close(self._sync.options.close_timeout_s)
                finally:
                    # Never while the writer still writes (a Ctrl-C interrupted the wait): a
                    # second writer would sweep its files. close() again finishes.
                    if self._writer is None or self._writer.finished():
                        self._release_lock()
        if self._writer is not None:
            self._writer.raise_error(clear=True)

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._forget_drop()
            self._lock.release()
        self._released = True

    def _check_open(self) -> None:
        if self._closed:
            raise CheckpointError(f"the manager of {self.directory} is closed", path=self.directory)

    def _writable(self) -> tuple[BackgroundWriter, StagingPool]:
        self._check_open()
        if self._writer is None or self._pool is None:
            raise CheckpointError(
                f"{self.directory} was opened read_only; it cannot save", path=self.directory
            )
        return self._writer, self._pool


def _items(state: Any, items: Mapping[str, Any] | None) -> dict[str, Any]:
    """The named items of one save: ``state`` alone is the item ``"state"``."""
    if items is None:
        return {DEFAULT_ITEM: state}
    if state is not None:
        raise ValueError("give state or items, not both")
    if not items:
        raise ValueError("items must name at least one item")
    for name in items:
        if not isinstance(name, str) or not _ITEM_NAME.match(name):
            raise ValueError(
                f"item names are letters, digits, '_' and '-' (not first), got {name!r}"
            )
    return dict(items)


def _check_metrics(metrics: Mapping[str, float] | None) -> dict[str, float]:
    """Metric values as floats: real numbers only (a bool, a string such as ``"1.5"`` or a
    complex number is refused with TypeError; an int too large for a float with ValueError).
    A one-element tensor or array counts as its number."""
    if metrics is None:
        return {}
    checked: dict[str, float] = {}
    for name, given in metrics.items():
        if not isinstance(name, str):
            raise TypeError(f"metric names must be str, got {name!r}")
        value: object = given
        if (isinstance(given, torch.Tensor) and given.numel() == 1) or (
            isinstance(given, np.ndarray) and given.size == 1
        ):
            value = given.item()
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"metric {name!r} must be a real number, got {value!r:.80}")
        try:
            checked[name] = float(value)
        except OverflowError:
            raise ValueError(f"metric {name!r} is too large for a float: {value!r:.40}") from None
    return checked
