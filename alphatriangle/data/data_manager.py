"""``DataManager``: alphatriangle 1.0.0's interface to a run's data, rebuilt on the engine.

It orchestrates; each decision and format lives in a module of its own. A save: 1) check
the parts (``parts.py``) 2) ask the schedule which items are due (``save_schedule.py``: the
checkpoint by ``CHECKPOINT_SAVE_FREQ_STEPS`` or ``CHECKPOINT_SAVE_FREQ_SECONDS``, the buffer
by ``BUFFER_SAVE_FREQ_STEPS``; both at a final save, the checkpoint at a best one) 3) build
their trees (``state_trees.py``: network, optimizer, LR scheduler, RNG states, counters, the
stats actor's state waited for a bounded time, the replay buffer's columns) 4) hand them to
the engine as one step, under the options the configs give (``engine_options.py``): stage
(``save_training_state`` returns here) → write → commit → retain → sync to MLflow.

The best step: a save whose ``metrics`` hold ``PersistenceConfig.BEST_METRIC`` is ranked by
it (``BEST_MODE``); ``is_best=True`` (1.0.0's flag) marks a step best whatever its metrics.
Retention keeps the ``KEEP_LATEST_CHECKPOINTS`` newest steps, the ``KEEP_BEST_CHECKPOINTS``
best ranked and the ``KEEP_BEST_CHECKPOINTS`` newest flagged, every ``KEEP_EVERY_STEPS``-th,
and the newest step holding each item. ``best_step()``: the newest flagged step, else the
best ranked. The first checkpoint saved without ``BEST_METRIC`` warns (once).

Resume: :meth:`DataManager.load_initial_state` states the rules (``resume_rules.py``:
explicit path, this run, its MLflow run, the newest previous run, fresh start); never a
silent fresh start. The path getters: ``run_paths.py``; putting a loaded state back:
``parts.py``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from alphatriangle.config import PersistenceConfig, TrainConfig
from alphatriangle.data._safe_globals import register_safe_globals
from alphatriangle.data.checkpoint import CheckpointManager, SaveHandle, StepExistsError
from alphatriangle.data.engine_options import BEST_FLAG, writer_options
from alphatriangle.data.parts import apply_loaded_state, check_parts, stats_state
from alphatriangle.data.resume_rules import resume_state
from alphatriangle.data.run_config import write_run_config
from alphatriangle.data.run_paths import RunPaths
from alphatriangle.data.run_reading import newest_other_run
from alphatriangle.data.save_schedule import SaveSchedule
from alphatriangle.data.schemas import LoadedTrainingState
from alphatriangle.data.state_trees import (
    BUFFER_ITEM,
    CHECKPOINT_ITEM,
    buffer_tree,
    checkpoint_tree,
)

__all__ = ["BUFFER_ITEM", "CHECKPOINT_ITEM", "DataManager"]

logger = logging.getLogger(__name__)


class DataManager:
    """Saves and loads a run's training state (1.0.0's interface); also a context manager.

    ``save_training_state`` returns once the state is staged (the write goes on in the
    background: its handle says when it committed); ``wait_until_finished`` waits for it and
    raises a background failure; ``close`` finishes saves and uploads (up to the sync's
    deadline) and releases the run's directory. ``best_step()`` and
    ``get_checkpoint_path(is_best=True)`` name the best step (see the module docstring)."""

    def __init__(
        self,
        persist_config: PersistenceConfig,
        train_config: TrainConfig,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        register_safe_globals()  # what its steps may pickle loads under the safe default
        self.persist_config = persist_config
        self.train_config = train_config
        self.run_name = train_config.RUN_NAME
        self.run_dir = persist_config.get_run_base_dir(self.run_name)
        self.checkpoint_dir = self.run_dir / persist_config.CHECKPOINT_SAVE_DIR_NAME
        self.schedule = SaveSchedule.from_configs(train_config, persist_config, clock)
        options = writer_options(persist_config, self.run_name, self.schedule.engine_policy())
        self.manager = CheckpointManager(self.checkpoint_dir, options, clock=clock)
        self._paths = RunPaths(persist_config, self.run_name, self.manager)
        self._warned_best_metric = False

    # -- context manager ------------------------------------------------------------------

    def __enter__(self) -> DataManager:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.manager.__exit__(*exc_info)

    def wait_until_finished(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()

    # -- saving ---------------------------------------------------------------------------

    def save_training_state(  # noqa: PLR0917 - 1.0.0's positional interface
        self,
        nn: Any,
        optimizer: torch.optim.Optimizer,
        stats_collector_actor: Any,
        buffer: Any,
        global_step: int,
        episodes_played: int,
        total_simulations_run: int,
        is_best: bool = False,
        is_final: bool = False,
        *,
        metrics: Mapping[str, float] | None = None,
        scheduler: Any = None,
        user_data: Mapping[str, Any] | None = None,
    ) -> SaveHandle | None:
        """Save what is due at ``global_step`` as one step: the checkpoint (network,
        optimizer, scheduler, RNG states, counters, stats) and/or the buffer. Returns the
        step's :class:`SaveHandle` once staged, or None when nothing is due (or the step is
        already saved). ``is_final`` saves both, waiting first for saves in flight: a step
        saved moments ago without the buffer is written again with both. ``is_best`` saves
        the checkpoint and marks it best (kept by ``KEEP_BEST_CHECKPOINTS``, named by
        ``best_step()``); ``metrics`` go into the step's manifest, and ``BEST_METRIC`` among
        them ranks the step.

        ``nn``: alphatriangle's ``NeuralNetwork`` (its ``.model``'s weights and its configs)
        or any ``torch.nn.Module`` (its ``state_dict()``; the config dicts stay empty).
        ``stats_collector_actor``: the ``StatsCollectorActor`` handle (its state is waited
        for at most ``STATS_ACTOR_TIMEOUT_S``), a plain ``StatsCollector``, or None.
        ``buffer``: an ``ExperienceBuffer``, or None for no buffer.

        Raises TypeError naming the parameter a part does not fit (at every call, whether
        or not anything is due), and a background failure of an earlier save."""
        check_parts(
            nn=nn,
            optimizer=optimizer,
            stats=stats_collector_actor,
            buffer=buffer,
            scheduler=scheduler,
        )
        persist = self.persist_config
        scheduled = self.schedule.due_items(global_step)
        checkpoint_due = is_final or is_best or CHECKPOINT_ITEM in scheduled
        buffer_due = (
            persist.SAVE_BUFFER and buffer is not None and (is_final or BUFFER_ITEM in scheduled)
        )
        if not (checkpoint_due or buffer_due):
            return None
        replace = False
        if is_final:  # a save of this very step may be in flight: let it commit first
            self.manager.wait_until_finished()
        if global_step in self.manager.all_steps():
            due = {CHECKPOINT_ITEM} if checkpoint_due else set()
            due |= {BUFFER_ITEM} if buffer_due else set()
            held = set(self.manager.metadata(global_step)["items"])
            if not is_final or due <= held:
                logger.info("step %d is saved already: nothing more to save", global_step)
                return None
            # The final save completes a step saved moments ago without all its items (the
            # buffer not due then): the step is written again, whole.
            logger.info("step %d is saved again with %s for the final save", global_step, due)
            replace = True
        items: dict[str, Any] = {}
        if checkpoint_due:
            items[CHECKPOINT_ITEM] = checkpoint_tree(
                nn,
                optimizer,
                scheduler,
                stats=stats_state(stats_collector_actor, persist.STATS_ACTOR_TIMEOUT_S),
                counters=(global_step, episodes_played, total_simulations_run),
                run_name=self.run_name,
                user_data=user_data,
            )
        if buffer_due:
            items[BUFFER_ITEM] = buffer_tree(buffer)
        step_metrics = dict(metrics or {})
        if is_best:
            step_metrics[BEST_FLAG] = 1.0
        if checkpoint_due:
            self._warn_unranked(global_step, step_metrics)
        else:  # only a step holding the checkpoint may rank as the best checkpoint
            step_metrics.pop(persist.BEST_METRIC, None)
        try:
            # A due step passes the engine's policy (the schedule); a final or best save is
            # asked for, whatever the schedule says: ``force``.
            explicit = is_final or is_best
            handle = self.manager.save(
                global_step, items=items, metrics=step_metrics, force=explicit, replace=replace
            )
        except StepExistsError:  # saved moments ago and still in flight (a final save, say)
            logger.info("step %d is being saved already: nothing more to save", global_step)
            return None
        if handle is not None:
            self.schedule.saved(global_step, set(items))
        return handle

    def _warn_unranked(self, step: int, metrics: Mapping[str, float]) -> None:
        """Once: a checkpoint saved without ``BEST_METRIC`` is not ranked, so best-K
        retention keeps no step on its account."""
        persist = self.persist_config
        if (
            self._warned_best_metric
            or not persist.KEEP_BEST_CHECKPOINTS
            or persist.BEST_METRIC in metrics
        ):
            return
        self._warned_best_metric = True
        logger.warning(
            "step %d is saved without the metric %r (PersistenceConfig.BEST_METRIC), so it "
            "is not ranked: KEEP_BEST_CHECKPOINTS=%d keeps only steps that log it (pass "
            "metrics={%r: ...} to save_training_state) or are saved with is_best=True",
            step,
            persist.BEST_METRIC,
            persist.KEEP_BEST_CHECKPOINTS,
            persist.BEST_METRIC,
        )

    def save_run_config(self, configs: Mapping[str, Any]) -> Path:
        """Write the run's configuration as JSON (atomically: temporary file, fsync, rename,
        fsync of the directory) and upload it to the MLflow run in the background; returns
        the file's path. Pydantic models are written as their fields
        (``model_dump(mode="json")``), paths as strings. A value JSON cannot hold (a tensor,
        an array, any other object) raises TypeError naming its key (``model.layers[2]``),
        and nothing is written."""
        path = write_run_config(self.run_dir / self.persist_config.CONFIG_FILENAME, configs)
        if self.manager.options.mlflow is not None:
            self.manager.upload_file(path, "config")
        return path

    # -- paths ----------------------------------------------------------------------------

    def best_step(self, run_name: str | None = None) -> int | None:
        """The best committed step of ``run_name`` (this run when None): the newest saved
        with ``is_best=True``, else the best by ``BEST_METRIC`` / ``BEST_MODE`` (NaN and
        infinities are never the best); None when no step is flagged or ranked."""
        return self._paths.best_step(run_name)

    def get_checkpoint_path(
        self,
        run_name: str | None = None,
        step: int | None = None,
        is_latest: bool = False,
        is_best: bool = False,
        is_final: bool = False,
    ) -> Path:
        """The step directory of a checkpoint of ``run_name`` (this run when None), chosen
        as 1.0.0 chose its file, first rule that applies:

        - ``is_latest``: the newest step holding a checkpoint (``step`` is not looked at:
          1.0.0 returned ``latest.pkl`` then);
        - ``is_best``: the best step (:meth:`best_step`; 1.0.0's ``best.pkl``);
        - ``step``: that step's directory, whether or not it exists (the would-be path, as
          1.0.0 returned the would-be file); with ``is_final`` the same directory, since a
          final save is a step like any other (1.0.0: ``checkpoint_final_step_<N>.pkl``);
        - otherwise (``is_final`` alone included, as in 1.0.0): the newest step holding a
          checkpoint.

        When no step fits (nothing saved yet, no best), the run's checkpoint directory, which
        is no step: loading from it fails with an error naming it."""
        return self._paths.checkpoint_path(run_name, step, is_latest=is_latest, is_best=is_best)

    def get_buffer_path(
        self, run_name: str | None = None, step: int | None = None, is_final: bool = False
    ) -> Path:
        """The step directory of ``step`` (the would-be path when it does not exist, as in
        1.0.0; ``is_final`` names the same directory), else of the newest step holding the
        buffer; the run's checkpoint directory when there is none."""
        return self._paths.buffer_path(run_name, step)

    def find_latest_run_dir(self, current_run_name: str) -> str | None:
        """The name of the newest other run (by the ``YYYYmmdd_HHMMSS`` timestamp in its
        name, as 1.0.0 did) that has checkpoints, ours or 1.0.0's; None when there is none.
        Its directory: ``persist_config.get_run_base_dir(name)``."""
        return newest_other_run(self.persist_config, current_run_name)

    # -- loading --------------------------------------------------------------------------

    def load_initial_state(self) -> LoadedTrainingState:
        """What to resume from: the first rule that applies.

        1. ``TrainConfig.LOAD_CHECKPOINT_PATH`` (and ``LOAD_BUFFER_PATH``): a step directory
           of ours, or a 1.0.0 ``.pkl`` file; a checkpoint's step directory also gives its
           buffer when it holds one.
        2. This run's newest committed step ("resuming run X from step N").
        3. When this run has no local step and its MLflow run holds complete steps (a new
           machine): the newest of them, fetched and verified.
        4. With ``AUTO_RESUME_LATEST``: the newest previous run with checkpoints (by the
           ``YYYYmmdd_HHMMSS`` timestamp in its name, as 1.0.0 did), ours or 1.0.0's.
        5. A fresh start (an empty :class:`LoadedTrainingState`), logged.

        The checkpoint and the buffer each come from the newest step holding them. A
        corrupt or truncated step or file is skipped for the newest intact one, with an
        error-level log naming it; when every checkpoint of the run is unreadable,
        :class:`CheckpointCorruptError` names them: never a silent fresh start. Nothing is
        applied here: :meth:`apply_loaded_state` puts the state into the live objects."""
        return resume_state(self.manager, self.persist_config, self.train_config)

    # -- applying -------------------------------------------------------------------------

    apply_loaded_state = staticmethod(apply_loaded_state)
