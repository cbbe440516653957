"""The manager's read-only queries: inspection of one step (``verify``, ``metadata``,
``array_metadata``: ``inspection.py`` under a reader's lease) and retention's decisions
(``plan_retention``, ``best_step``: ``deleter.py`` and ``retention.py`` over the catalogue).
Each delegates; none writes. Kept apart so that ``manager.py`` reads as the save and restore
orchestration alone; the methods are those of
:class:`~alphatriangle.data.checkpoint.manager.CheckpointManager`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alphatriangle.data.checkpoint.errors import CheckpointNotFoundError
from alphatriangle.data.checkpoint.inspection import read_array_metadata, verify_step
from alphatriangle.data.checkpoint.layout import DEFAULT_ITEM
from alphatriangle.data.checkpoint.locking import leased_step
from alphatriangle.data.checkpoint.manifest import read_manifest
from alphatriangle.data.checkpoint.retention import RetentionPolicy, best_of

if TYPE_CHECKING:
    from alphatriangle.data.checkpoint.catalog import StepCatalog
    from alphatriangle.data.checkpoint.deleter import StepDeleter
    from alphatriangle.data.checkpoint.options import CheckpointManagerOptions

__all__ = ["QueryMethods"]


class QueryMethods:
    """Mixed into the manager, which provides the attributes and checks declared here."""

    directory: Path
    options: CheckpointManagerOptions
    _catalog: StepCatalog
    _deleter: StepDeleter

    if TYPE_CHECKING:

        def _check_open(self) -> None: ...

        def all_steps(self) -> list[int]: ...

    def latest_step(self) -> int | None:
        """The newest committed step, or None."""
        steps = self.all_steps()
        return steps[-1] if steps else None

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
        key = self.options.signing_key
        with leased_step(self.directory, step) as step_dir:
            manifest = read_manifest(step_dir, step, signing_key=key)
            return read_array_metadata(step_dir, manifest, item, signing_key=key)

    def verify(self, step: int) -> None:
        """Check every file of ``step`` (sizes, checksums, signature when a key is set) and
        every item's index and tree, without unpickling anything or building a tensor.
        Raises :class:`CheckpointCorruptError` naming the file, or
        :class:`CheckpointNotFoundError`."""
        self._check_open()
        key = self.options.signing_key
        with leased_step(self.directory, step) as step_dir:
            verify_step(step_dir, read_manifest(step_dir, step, signing_key=key), signing_key=key)

    def metadata(self, step: int) -> dict[str, Any]:
        """The manifest of ``step``: step, wall time, metrics (floats, NaN and infinities
        included), items, files with sizes and checksums, library versions."""
        self._check_open()
        with leased_step(self.directory, step) as step_dir:
            manifest = read_manifest(step_dir, step)
            return {**copy.deepcopy(dict(manifest.raw)), "metrics": dict(manifest.metrics)}

    def plan_retention(
        self, policy: RetentionPolicy | None = None, *, steps: list[int] | None = None
    ) -> set[int]:
        """The committed steps that ``policy`` (the configured one when None) keeps, with
        what no policy may delete: the newest step, the newest step holding each item, and
        steps whose manifest cannot be read. Decides only; deletes nothing."""
        steps = self.all_steps() if steps is None else steps
        return self._deleter.plan_retention(policy or self.options.retention, steps)

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
        infos, _ = self._catalog.step_infos(self.all_steps())
        best = best_of(infos, ranking.metric, ranking.mode)
        return best[0] if best else None
