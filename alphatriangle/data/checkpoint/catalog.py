"""The step catalogue: which steps of a directory are committed, in flight, and what each
holds (wall time, metrics, items), for the manager, retention and restore.

Committed steps come from scanning the directory (``layout.scan_steps``); what a step holds
is read from its manifest the first time it is asked for, then cached (a step this process
saved is known without reading). A writer's catalogue changes only through its own saves and
deletions (:meth:`StepCatalog.reload` rescans); a reader's rescans on every listing, as
another process may commit meanwhile. Thread-safe: one lock, held across a rescan so that a
commit meanwhile is never lost.

Cost: one ``scandir`` per rescan; one small manifest read per step, once.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from alphatriangle.data.checkpoint.errors import CheckpointCorruptError, StepExistsError
from alphatriangle.data.checkpoint.layout import DEFAULT_ITEM, scan_steps, step_dir_name
from alphatriangle.data.checkpoint.manifest import read_manifest
from alphatriangle.data.checkpoint.retention import StepInfo

__all__ = ["StepCatalog"]

logger = logging.getLogger(__name__)


class StepCatalog:
    """Committed and in-flight steps of ``directory``, and the last save (for save
    policies). ``rescan_on_list``: a reader's catalogue, rescanned on every listing."""

    def __init__(self, directory: Path, *, rescan_on_list: bool) -> None:
        self.directory = directory
        self.lock = threading.RLock()
        self._rescan_on_list = rescan_on_list
        self._infos: dict[int, StepInfo | None] = {}  # committed steps; info once read
        self._in_flight: set[int] = set()
        self.last_saved: tuple[int, float] | None = None  # step, wall time: save policies
        self._warned_incomplete: set[Path] = set()

    # -- listing --------------------------------------------------------------------------

    def reload(self) -> None:
        """Rescan the directory for committed steps. A step-named directory without a
        manifest (empty, or copied in without one) is no step: it is left alone and named in
        a warning (once)."""
        with self.lock:  # held across the scan: a commit meanwhile is never lost
            scan = scan_steps(self.directory)
            self._infos = {step: self._infos.get(step) for step in scan.steps}
            for path in scan.incomplete:
                if path not in self._warned_incomplete:
                    self._warned_incomplete.add(path)
                    logger.warning(
                        "%s has no manifest: it is not a committed step, and is left alone",
                        path,
                    )
            if self.last_saved is None and not self._rescan_on_list:
                self.last_saved = self.newest_committed()

    def all_steps(self) -> list[int]:
        """Committed steps, ascending."""
        if self._rescan_on_list:
            self.reload()
        with self.lock:
            return sorted(self._infos)

    def is_committed(self, step: int) -> bool:
        with self.lock:
            return step in self._infos

    def in_flight(self) -> set[int]:
        with self.lock:
            return set(self._in_flight)

    def newest_committed(self) -> tuple[int, float] | None:
        """The newest committed step and its wall time (what save policies count from
        before this manager's first save)."""
        with self.lock:
            if not self._infos:
                return None
            newest = max(self._infos)
        try:
            manifest = read_manifest(self.directory / step_dir_name(newest), newest)
        except CheckpointCorruptError:
            return (newest, float("-inf"))  # due by time; restoring it will say what is wrong
        return (newest, manifest.wall_time)

    def step_infos(self, steps: list[int]) -> tuple[list[StepInfo], set[int]]:
        """StepInfo of each step: wall time, metrics, items (manifests are read once per
        step, then cached); steps whose manifest cannot be read are returned apart, and
        retention never deletes them."""
        infos, unreadable = [], set()
        for step in steps:
            with self.lock:
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
                with self.lock:
                    if step in self._infos:
                        self._infos[step] = info
            infos.append(info)
        return infos, unreadable

    def steps_holding(self, item: str) -> list[int]:
        """Committed steps, newest first, that hold ``item`` (or whose manifest cannot say:
        restoring them reports why)."""
        steps = self.all_steps()
        with self.lock:
            known = list(self._infos.values())
        if item == DEFAULT_ITEM and not any(
            info is not None and info.items != {DEFAULT_ITEM} for info in known
        ):
            return steps[::-1]
        infos, unreadable = self.step_infos(steps)
        holding = {info.step for info in infos if item in info.items} | unreadable
        return [s for s in reversed(steps) if s in holding]

    # -- changes --------------------------------------------------------------------------

    def refuse_existing(self, step: int, *, replace: bool, hint: bool = False) -> None:
        """Raise :class:`StepExistsError` for a step in flight, or committed unless
        ``replace``; ``hint`` adds how to overwrite."""
        with self.lock:
            exists = step in self._infos
            if (exists and not replace) or step in self._in_flight:
                detail = (
                    ""
                    if not hint
                    else ("" if exists else " (in flight)")
                    + ("; pass replace=True to overwrite a committed step")
                )
                raise StepExistsError(
                    f"step {step} already exists in {self.directory}{detail}",
                    path=self.directory / step_dir_name(step),
                    step=step,
                )

    def refuse_in_flight(self, step: int) -> None:
        """Raise :class:`StepExistsError` for a step being saved."""
        with self.lock:
            if step in self._in_flight:
                path = self.directory / step_dir_name(step)
                raise StepExistsError(f"step {step} is being saved", path=path, step=step)

    def begin_save(self, step: int) -> None:
        with self.lock:
            self._in_flight.add(step)

    def note_queued(self, step: int, wall_time: float) -> None:
        """The save of ``step`` is queued: save policies count from it."""
        with self.lock:
            self.last_saved = (step, wall_time)

    def end_save(self, step: int) -> None:
        with self.lock:
            self._in_flight.discard(step)

    def add_committed(self, step: int, info: StepInfo | None) -> None:
        with self.lock:
            self._infos[step] = info

    def forget(self, step: int, *, recount: bool = False) -> None:
        """``step`` was deleted. ``recount`` (a deletion asked for): when it was the last
        save, save policies count from the newest step left."""
        with self.lock:
            self._infos.pop(step, None)
            deleted_last = self.last_saved is not None and self.last_saved[0] == step
        if recount and deleted_last:
            newest = self.newest_committed()
            with self.lock:
                self.last_saved = newest
