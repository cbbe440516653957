"""The checkpoint manager: orchestrates save and restore; owns no format, naming or policy.

Its public methods delegate: saving to ``staging`` (stage), ``writer`` (the background job),
``step_writer`` (files), ``deleter`` (commit, replace, delete, retention); restoring to
``restore`` (the read pipeline) and ``inspection``; which steps exist to ``catalog``; remote
storage to ``sync`` behind ``remote.RemoteStore``. See the engine README's module map.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from alphatriangle.data.checkpoint._interrupts import holding, interrupts_deferred
from alphatriangle.data.checkpoint._lifecycle import on_drop, weakly
from alphatriangle.data.checkpoint._query_methods import QueryMethods
from alphatriangle.data.checkpoint._rank_methods import RankMethods, ranks_for
from alphatriangle.data.checkpoint._remote_methods import RemoteStorageMethods
from alphatriangle.data.checkpoint.catalog import StepCatalog
from alphatriangle.data.checkpoint.commit import (
    create_directory_durably,
    create_temporary_step_dir,
    remove_tree,
)
from alphatriangle.data.checkpoint.deleter import StepDeleter
from alphatriangle.data.checkpoint.errors import CheckpointError
from alphatriangle.data.checkpoint.layout import DEFAULT_ITEM, named_items
from alphatriangle.data.checkpoint.locking import WriterLock
from alphatriangle.data.checkpoint.manifest import check_metrics
from alphatriangle.data.checkpoint.mapping import PinnedChunks
from alphatriangle.data.checkpoint.options import CheckpointManagerOptions
from alphatriangle.data.checkpoint.partial_restore import Selector
from alphatriangle.data.checkpoint.restore import (
    RestoreRequest,
    restore_intact,
    restore_newest,
    restore_request,
)
from alphatriangle.data.checkpoint.retention import StepInfo
from alphatriangle.data.checkpoint.save_decision import SaveContext
from alphatriangle.data.checkpoint.staging import StagedState, StagingPool
from alphatriangle.data.checkpoint.step_writer import write_step_files
from alphatriangle.data.checkpoint.sync import MlflowSync
from alphatriangle.data.checkpoint.writer import BackgroundWriter, SaveHandle

__all__ = ["CheckpointManager"]

logger = logging.getLogger(__name__)


class CheckpointManager(QueryMethods, RemoteStorageMethods, RankMethods):
    """Saves state trees as numbered steps in one directory, and restores them.

    A save runs 1) stage, on the caller's thread: tensors and arrays copied into a reusable
    host buffer, other leaves pickled; ``save`` returns here 2) write, on the background
    writer thread: every file into a hidden temporary directory, fsynced, manifest last
    3) commit: the directory renamed to ``step_<N>`` and its parent fsynced 4) retain: the
    retention policy decides, the deleter removes what it does not keep 5) sync: the upload
    is queued (with MLflow sync on).

    A restore runs 1) lease 2) manifest 3) index 4) map and verify 5) build arrays
    6) unpickle 7) decode (``restore.py``).

    Guarantees: what ``restore`` returns equals the state when ``save`` returned; a step is
    visible whole or not at all, and durable once its handle's ``committed`` is done; a crash
    at any instant loses no committed step (leftovers are swept at the next open); every file
    is checksummed and verified on restore; a background failure is raised, with its original
    type, at the next ``save``, ``wait_until_finished`` or ``close``; one writer per
    directory, readers (``read_only=True``) any number.

    The public methods may be called from several threads: saves are serialised, restores run
    concurrently with them. The remote-storage methods (``fetch``, ``wait_for_uploads``, ...)
    are in ``_remote_methods.py``, the read-only queries (``verify``, ``metadata``,
    ``plan_retention``, ...) in ``_query_methods.py``.

    With ``process_group``, every rank of the group runs its own manager and calls it
    collectively: 2) and 3) run together (``_distributed.py``: DCP's planners, each rank's
    share in its own files, one commit by rank 0), rank 0 alone takes the lock, sweeps,
    retains, syncs and deletes, and the other ranks learn its outcome (``_rank_methods.py``).
    """

    def __init__(
        self,
        directory: str | Path,
        options: CheckpointManagerOptions | None = None,
        *,
        clock: Callable[[], float] = time.time,
        process_group: Any = None,
    ) -> None:
        self.directory = Path(directory)
        self.options = options if options is not None else CheckpointManagerOptions()
        # With a process group, every rank of it runs this manager collectively (see
        # _distributed.py): rank 0 leads (lock, sweep, manifest, commit, retention, sync).
        self._ranks = ranks_for(process_group, self.options)
        lead = self._ranks is None or self._ranks.rank == 0
        self.skipped_steps: list[int] = []
        self._clock = clock
        self._save_policy = self.options.save_decision()  # the options are frozen
        self._catalog = StepCatalog(self.directory, rescan_on_list=self.options.read_only)
        self._save_lock = threading.Lock()
        self._closed = False
        self._released = False  # the writer stopped and the lock released: close is done
        self._close_lock = threading.Lock()
        self._lock: WriterLock | None = None
        self._writer: BackgroundWriter | None = None
        self._pool: StagingPool | None = None
        if not self.options.read_only:
            create_directory_durably(self.directory)
            if lead:
                self._lock = WriterLock(self.directory, self.options.lock_timeout_s)
            self._open_together(self._lock)
            self._pool = StagingPool(self.options.max_pending)
            self._writer = BackgroundWriter(f"checkpoint-writer:{self.directory.name}")
        self.reload()
        self._sync: MlflowSync | None = None
        self._pinned = PinnedChunks()  # allocated on the first restore to CUDA
        if self.options.mlflow is not None and self._writer is not None and lead:
            self._sync = MlflowSync(
                self.directory,
                self.options.mlflow,
                committed_steps=weakly(self.all_steps, []),
                best_step=weakly(self.best_step, None),
                on_failure=self._writer.record,
            )
        self._deleter = StepDeleter(
            self._catalog,
            lock_timeout_s=self.options.lock_timeout_s,
            clock=clock,
            uploads_pending=set if self._sync is None else self._sync.protected,
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
        if self._catalog.is_committed(step) or step in self._catalog.in_flight():
            return False
        return self._due(step)

    def _due_here(self, step: int) -> bool:
        with self._catalog.lock:
            last = self._catalog.last_saved
        context = SaveContext(
            step=step,
            now=self._clock(),
            last_step=None if last is None else last[0],
            last_time=None if last is None else last[1],
        )
        return self._save_policy.should_save(context)

    def saving_in_progress(self) -> bool:
        """Whether a save is staged and not yet committed (or failed)."""
        return bool(self._catalog.in_flight())

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
        trees = named_items(state, items)
        self._catalog.refuse_existing(step, replace=replace, hint=True)
        if not (force or replace) and not self._due(step):
            return None
        checked_metrics = check_metrics(metrics)
        with holding(self._save_lock):
            # close() sets _closed, then takes this lock to stop the writer: a save that got
            # here after it must not queue a job that nothing would run.
            self._check_open()
            self._catalog.refuse_existing(step, replace=replace)
            slot = pool.acquire_for(step, block=self.options.on_full == "wait")
            if slot is None:
                self.skipped_steps.append(step)
                return None

            def finish_save() -> None:
                pool.release(slot)
                self._catalog.end_save(step)

            queued = False
            try:  # until the job is queued, any exception (Ctrl-C too) gives everything back
                if writer.has_error():
                    # The save this one waited for failed: report it now, not one save later.
                    writer.raise_error(clear=True)
                info = StepInfo(step, self._clock(), checked_metrics, frozenset(trees))
                job = self._save_job(info, trees, slot, replace)
                handle = SaveHandle(step)
                self._catalog.begin_save(step)
                writer.submit(
                    job,
                    handle,
                    finish_save,
                    lambda: self._after_commit(info.step),
                )
                queued = True
                self._catalog.note_queued(step, info.wall_time)
            finally:
                if not queued:
                    finish_save()
            return handle

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
                incremental=self.options.incremental,
                catalog=self._catalog,
            )
            final = self._deleter.commit(temporary, info.step, replace=replace)
        except BaseException:
            remove_tree(temporary)
            raise
        self._catalog.add_committed(info.step, info)  # the job's cleanup ends its flight
        return final

    def _after_commit(self, step: int) -> None:
        """On the writer thread, after ``step`` committed: 4) retain 5) sync (the upload
        itself runs on the uploader's thread). With a process group, on rank 0, the other
        ranks told what it deleted."""

        def retain_and_sync() -> None:
            if self._sync is not None:
                self._sync.enqueue(step)  # before retention: a pending upload is protected
            self._deleter.apply_retention(self.options.retention)

        self._after_commit_together(retain_and_sync)

    # -- deleting -----------------------------------------------------------

    def delete(self, step: int) -> None:
        """Delete a committed step now (for a rollback: restore an older step, delete the
        newer ones, train on and save them again). Atomic like retention's deletions (renamed
        out of sight, then removed), never under a reader: waits up to ``lock_timeout_s``
        for readers to let go. Raises :class:`CheckpointNotFoundError` for a step that is
        not committed, :class:`StepExistsError` for a step in flight, and
        :class:`CheckpointError` when readers held it throughout. With a process group,
        every rank calls it: rank 0 deletes, every rank forgets the step or raises."""
        self._writable()
        self._delete_together(step)

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
        request = restore_request(
            self.options,
            map_location=map_location,
            weights_only=weights_only,
            select=select,
            item=item,
            target=target,
            ranks=self._ranks,
        )
        if not fallback:
            return self._restore(step, request)
        return restore_intact(
            self._catalog.steps_holding(item), lambda candidate: self._restore(candidate, request)
        )

    def _restore(self, step: int | None, request: RestoreRequest) -> Any:
        self._check_open()
        return restore_newest(
            self.directory,
            step,
            request,
            self.options,
            self._pinned,
            steps_holding=self._catalog.steps_holding,
            reload=self.reload,
        )

    # -- listing --------------------------------------------------------------------------

    def all_steps(self) -> list[int]:
        """Committed steps, ascending. A reader rescans the directory on every call."""
        return self._catalog.all_steps()

    def reload(self) -> None:
        """Rescan the directory for committed steps. A step-named directory without a
        manifest (empty, or copied in without one) is no step: it is left alone and named in
        a warning (once)."""
        self._catalog.reload()

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

    @interrupts_deferred
    def close(self) -> None:
        """Finish in-flight saves, stop the writer, release the lock; raise a pending
        background failure. Idempotent; a concurrent ``close`` returns only once the writer
        is done too, and is raised the failure as well. A Ctrl-C while it waits for the
        writer leaves the manager closed to saves, its lock held until its writer is done:
        ``close()`` again finishes (so does the end of the process)."""
        with holding(self._close_lock):
            if self._ranks is not None:
                self._ranks.restore_sigterm()
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
