"""The deleter: acts on what retention decides, and never under a reader.

A step is deleted atomically (renamed out of the step namespace, the parent fsynced, then
removed: ``commit.trash_step_dir``), and only when no reader holds a lease on it (a
non-blocking exclusive ``flock``: ``locking.try_take_step``). Retention skips a step being
read and deletes it at a later pass; ``delete`` and ``save(replace=True)`` wait up to
``lock_timeout_s`` for readers to let go, then raise :class:`CheckpointError`.

Retention's protections (:meth:`StepDeleter.plan_retention`): whatever the policy, the newest
step, the newest step holding each item, steps whose manifest cannot be read, steps in
flight and (with ``keep_until_uploaded``) steps whose upload is pending are kept.

Cost: a retention pass reads each step's manifest once (cached by the catalogue), then one
``rename`` and one ``rmtree`` per deleted step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from alphatriangle.data.checkpoint.catalog import StepCatalog
from alphatriangle.data.checkpoint.commit import commit_step_dir, remove_tree, trash_step_dir
from alphatriangle.data.checkpoint.errors import CheckpointError
from alphatriangle.data.checkpoint.layout import step_dir_name
from alphatriangle.data.checkpoint.locking import step_not_found, try_take_step
from alphatriangle.data.checkpoint.retention import RetentionPolicy

__all__ = ["StepDeleter"]

logger = logging.getLogger(__name__)


class StepDeleter:
    """Deletes and replaces committed steps of ``catalog``'s directory (see the module
    docstring); ``uploads_pending`` names the steps retention must keep for their upload."""

    def __init__(
        self,
        catalog: StepCatalog,
        *,
        lock_timeout_s: float,
        clock: Callable[[], float],
        uploads_pending: Callable[[], set[int]] = set,
    ) -> None:
        self.catalog = catalog
        self.directory = catalog.directory
        self.lock_timeout_s = lock_timeout_s
        self.clock = clock
        self.uploads_pending = uploads_pending

    def _without_readers(
        self, step_dir: Path, step: int, action: str, attempt: Callable[[], bool]
    ) -> None:
        """Retry ``attempt`` (which acts only when no reader holds ``step_dir``) for up to
        ``lock_timeout_s``; then raise :class:`CheckpointError`. Returns as soon as it acted
        or the step is gone."""
        deadline = time.monotonic() + self.lock_timeout_s
        while not attempt():
            if not step_dir.exists():
                return  # gone meanwhile (retention took it)
            if time.monotonic() > deadline:
                raise CheckpointError(
                    f"cannot {action} step {step}: readers held it for {self.lock_timeout_s:g} s",
                    path=step_dir,
                    step=step,
                )
            time.sleep(0.01)

    def commit(self, temporary: Path, step: int, *, replace: bool) -> Path:
        """Commit a written temporary directory as ``step``; with ``replace``, an existing
        copy is replaced once no reader holds it."""
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

    def delete(self, step: int) -> None:
        """Delete committed ``step`` now, waiting for readers (see the module docstring).
        Raises :class:`CheckpointNotFoundError`, :class:`StepExistsError` for a step in
        flight, :class:`CheckpointError` when readers held it throughout."""
        self.catalog.refuse_in_flight(step)
        if not self.catalog.is_committed(step):
            raise step_not_found(self.directory, step)
        step_dir = self.directory / step_dir_name(step)
        self._without_readers(step_dir, step, "delete", lambda: self.delete_unread(step))
        self.catalog.forget(step, recount=True)

    def delete_unread(self, step: int) -> bool:
        """Take ``step`` out of sight and remove it; False when a reader holds it (or it is
        gone already)."""
        step_dir = self.directory / step_dir_name(step)
        with try_take_step(step_dir) as taken:
            if not taken:
                return False
            trash = trash_step_dir(step_dir, step)
        self.catalog.forget(step)
        remove_tree(trash)
        return True

    def plan_retention(self, policy: RetentionPolicy, steps: list[int]) -> set[int]:
        """The steps of ``steps`` that ``policy`` keeps, with what no policy may delete: the
        newest step, the newest step holding each item, and steps whose manifest cannot be
        read. Decides only; deletes nothing."""
        if not steps:
            return set()
        # Manifests are read (once per step, then cached) whatever the policy: only they say
        # which items a step holds.
        infos, unreadable = self.catalog.step_infos(steps)
        keep = policy.keep(infos, self.clock())
        newest_per_item = {item: info.step for info in infos for item in info.items}
        return keep | unreadable | {steps[-1]} | set(newest_per_item.values())

    def apply_retention(self, policy: RetentionPolicy) -> None:
        """Delete the committed steps ``policy`` does not keep, but those protected (in
        flight, upload pending) and those being read (deleted at a later pass)."""
        steps = self.catalog.all_steps()
        protected = self.catalog.in_flight() | self.uploads_pending()
        if len(steps) <= 1:
            return
        keep = self.plan_retention(policy, steps) | protected
        for step in steps:
            if step not in keep and not self.delete_unread(step):
                logger.info("step %d is being read; retention deletes it later", step)
