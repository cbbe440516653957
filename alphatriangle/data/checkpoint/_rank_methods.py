"""The manager's parts for a process group: what rank 0 does alone and how the other ranks
learn of it, and the collective write. The ranks' machinery itself is ``_distributed.py``;
these methods are those of :class:`~alphatriangle.data.checkpoint.manager.CheckpointManager`,
kept apart so that ``manager.py`` reads as the orchestration of one process.

Rank 0 leads: the writer lock and the sweep at open, the commit, retention and sync after
it, ``delete``. Every other rank waits for rank 0's outcome (its failure is raised on every
rank) and keeps its list of committed steps equal to rank 0's. Without a process group each
method does the single-process thing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alphatriangle.data.checkpoint._chunks import is_parted
from alphatriangle.data.checkpoint.commit import sweep_leftovers
from alphatriangle.data.checkpoint.staging import StagedState, stage_state

if TYPE_CHECKING:
    from alphatriangle.data.checkpoint._distributed import RankCheckpointer, StagedRank
    from alphatriangle.data.checkpoint.catalog import StepCatalog
    from alphatriangle.data.checkpoint.deleter import StepDeleter
    from alphatriangle.data.checkpoint.locking import WriterLock
    from alphatriangle.data.checkpoint.options import CheckpointManagerOptions
    from alphatriangle.data.checkpoint.retention import StepInfo
    from alphatriangle.data.checkpoint.staging import StagingSlot

__all__ = ["RankMethods", "ranks_for"]


def ranks_for(process_group: Any, options: CheckpointManagerOptions) -> RankCheckpointer | None:
    """The ranks of ``process_group`` (None without one); ValueError for an option that a
    group cannot honour."""
    if process_group is None:
        return None
    if options.on_full == "skip":  # a slot free on one rank, not on another
        raise ValueError("with a process_group, on_full must be 'wait': every rank saves")
    if options.incremental:  # each rank writes its share whole
        raise ValueError("incremental saves are for one process: not with a process_group")
    from alphatriangle.data.checkpoint._distributed import RankCheckpointer

    return RankCheckpointer(process_group, timeout_s=options.collective_timeout_s)


class RankMethods:
    """Mixed into the manager, which provides the attributes declared here."""

    directory: Path
    options: CheckpointManagerOptions
    _ranks: RankCheckpointer | None
    _catalog: StepCatalog
    _deleter: StepDeleter

    if TYPE_CHECKING:

        def _due_here(self, step: int) -> bool: ...

        def _write_step(
            self, info: StepInfo, staged: Mapping[str, StagedState], replace: bool
        ) -> Path: ...

    @property
    def preemption_requested(self) -> bool:
        """With a process group: a rank received SIGTERM and every rank has agreed on it
        (at a ``should_save`` or ``save``, which then returned True / saved on every rank):
        stop after this save. Always False without a process group."""
        return self._ranks is not None and self._ranks.preempted

    def _due(self, step: int) -> bool:
        """Whether ``step`` is due; with a process group, whether it is due on any rank (a
        collective: every rank decides alike), or any rank received SIGTERM."""
        if self._ranks is None:
            return self._due_here(step)
        return self._ranks.agree_due(self._due_here(step))

    def _save_job(
        self, info: StepInfo, trees: Mapping[str, Any], slot: StagingSlot, replace: bool
    ) -> Callable[[], Path]:
        """1) stage ``trees`` into ``slot``; the job that writes and commits them. With a
        process group, a failure to stage is raised by the job, on every rank."""
        if self._ranks is None:
            staged = {
                name: stage_state(
                    tree, slot.buffer(name), parted=is_parted(self.options.incremental, name)
                )
                for name, tree in trees.items()
            }
            return functools.partial(self._write_step, info, staged, replace)
        by_rank = self._ranks.stage(info.step, trees, slot.buffer)
        return functools.partial(self._write_ranks, info, by_rank, replace)

    def _open_together(self, lock: WriterLock | None) -> None:
        """Take the writer lock and sweep leftovers (``lock`` is None on the other ranks of
        a group); every rank of a group learns whether rank 0 could, before any goes on."""

        def take_and_sweep() -> None:
            if lock is None:
                return
            lock.acquire()
            try:
                sweep_leftovers(self.directory)
            except BaseException:
                lock.release()
                raise

        if self._ranks is None:
            take_and_sweep()
        else:
            self._ranks.on_rank0(take_and_sweep, f"open {self.directory} for writing")

    def _write_ranks(self, info: StepInfo, staged: StagedRank, replace: bool) -> Path:
        """On every rank's writer thread: 2) write 3) commit, together (``_distributed.py``);
        rank 0 commits through the deleter, as the single-process ``_write_step`` does."""
        assert self._ranks is not None
        final = self._ranks.write(
            staged,
            self.directory,
            metrics=info.metrics,
            wall_time=info.wall_time,
            signing_key=self.options.signing_key,
            commit=functools.partial(self._deleter.commit, replace=replace),
        )
        self._catalog.add_committed(info.step, info)
        return final

    def _after_commit_together(self, retain_and_sync: Callable[[], None]) -> None:
        """Rank 0 runs ``retain_and_sync`` and sends the steps it deleted to the other
        ranks, which forget them (a collective of the writer threads, which commit the same
        steps in the same order)."""
        ranks = self._ranks
        if ranks is None:
            retain_and_sync()
            return
        if ranks.rank != 0:
            for deleted in ranks.from_rank0(None, background=True):
                self._catalog.forget(deleted)
            return
        before = set(self._catalog.all_steps())
        try:
            retain_and_sync()
        finally:
            deleted = sorted(before - set(self._catalog.all_steps()))
            ranks.from_rank0(deleted, background=True)

    def _delete_together(self, step: int) -> None:
        """Rank 0 deletes ``step``; every rank forgets it, or raises rank 0's failure."""
        if self._ranks is None:
            self._deleter.delete(step)
            return
        self._ranks.on_rank0(functools.partial(self._deleter.delete, step), f"delete step {step}")
        self._catalog.forget(step, recount=True)
