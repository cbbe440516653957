"""Which step directory of a run 1.0.0's path getters name, for this run or another.

1.0.0 named files (``latest.pkl``, ``best.pkl``, ``checkpoint_step_<N>.pkl``); its getters
now name step directories, chosen by the same rules (see
:meth:`~alphatriangle.data.DataManager.get_checkpoint_path`). This run is read through its
own manager; another run through a read-only manager that ranks its steps as this run does,
opened for the one question and closed. Guarantee: a getter never creates or changes
anything; when no step fits, it names the run's checkpoint directory, which is no step, so
that loading from it fails naming it. Cost: one manifest read per committed step.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from alphatriangle.config import PersistenceConfig
from alphatriangle.data.checkpoint import CheckpointManager, step_dir_name
from alphatriangle.data.engine_options import reader_options
from alphatriangle.data.run_reading import best_step, newest_holding
from alphatriangle.data.state_trees import BUFFER_ITEM, CHECKPOINT_ITEM

__all__ = ["RunPaths"]


class RunPaths:
    """The step directories of the runs under ``persist``'s data root, answered for this
    run (``run_name``, read through ``manager``) or another (``run_name=`` its name)."""

    def __init__(self, persist: PersistenceConfig, run_name: str, manager: CheckpointManager):
        self.persist = persist
        self.run_name = run_name
        self.manager = manager

    def checkpoint_dir(self, run_name: str | None = None) -> Path:
        if run_name is None or run_name == self.run_name:
            return self.manager.directory
        return self.persist.get_run_base_dir(run_name) / self.persist.CHECKPOINT_SAVE_DIR_NAME

    def _reading(self, run_name: str | None) -> AbstractContextManager[CheckpointManager]:
        """This run's manager, or a reader of another run ranking as this one does."""
        if run_name is None or run_name == self.run_name:
            return nullcontext(self.manager)
        return CheckpointManager(self.checkpoint_dir(run_name), reader_options(self.persist))

    def _step_path(self, run_name: str | None, step: int | None) -> Path:
        directory = self.checkpoint_dir(run_name)
        return directory if step is None else directory / step_dir_name(step)

    def best_step(self, run_name: str | None = None) -> int | None:
        with self._reading(run_name) as reader:
            return best_step(reader)

    def checkpoint_path(
        self, run_name: str | None, step: int | None, *, is_latest: bool, is_best: bool
    ) -> Path:
        if step is not None and not (is_latest or is_best):
            return self._step_path(run_name, step)
        with self._reading(run_name) as reader:
            found = (
                best_step(reader)
                if is_best and not is_latest
                else newest_holding(reader, CHECKPOINT_ITEM)
            )
        return self._step_path(run_name, found)

    def buffer_path(self, run_name: str | None, step: int | None) -> Path:
        if step is not None:
            return self._step_path(run_name, step)
        with self._reading(run_name) as reader:
            return self._step_path(run_name, newest_holding(reader, BUFFER_ITEM))
