"""``DataManager``: alphatriangle 1.0.0's interface to a run's data, rebuilt on the engine.

A save: 1) decide what is due (the checkpoint by ``CHECKPOINT_SAVE_FREQ_STEPS`` or
``CHECKPOINT_SAVE_FREQ_SECONDS``, the buffer by ``BUFFER_SAVE_FREQ_STEPS``; both at a final
or best save) 2) gather the state: network, optimizer, LR scheduler, RNG states, counters,
the stats actor's state (waited for a bounded time), the replay buffer's columns 3) hand the
due items to the engine as one step: stage (``save_training_state`` returns here) → write →
commit → retain → sync to MLflow.

The best step: a save whose ``metrics`` hold ``PersistenceConfig.BEST_METRIC`` is ranked by
it (``BEST_MODE``); ``is_best=True`` (1.0.0's flag) marks a step best whatever its metrics.
Retention keeps the ``KEEP_LATEST_CHECKPOINTS`` newest steps, the ``KEEP_BEST_CHECKPOINTS``
best ranked and the ``KEEP_BEST_CHECKPOINTS`` newest flagged, every ``KEEP_EVERY_STEPS``-th,
and the newest step holding each item. ``best_step()``: the newest flagged step, else the
best ranked. The first checkpoint saved without ``BEST_METRIC`` warns (once).

Resume: :meth:`DataManager.load_initial_state` states the rules (explicit path, this run,
its MLflow run, the newest previous run, fresh start); never a silent fresh start.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from alphatriangle.config import PersistenceConfig, TrainConfig
from alphatriangle.data._safe_globals import register_safe_globals
from alphatriangle.data.checkpoint import (
    CheckpointManager,
    CheckpointManagerOptions,
    KeepBest,
    KeepEvery,
    KeepLatest,
    MlflowSyncOptions,
    RetentionPolicy,
    SaveContext,
    SaveEvery,
    SaveHandle,
    SaveInterval,
    SavePolicy,
    StepExistsError,
    fsync_dir,
    step_dir_name,
)
from alphatriangle.data.run_reading import (
    BEST_FLAG,
    best_step,
    newest_holding,
    newest_other_run,
    read_explicit,
    read_run,
    read_run_dir,
    step_of,
)
from alphatriangle.data.schemas import LoadedTrainingState
from alphatriangle.data.state_trees import (
    BUFFER_ITEM,
    CHECKPOINT_ITEM,
    buffer_tree,
    check_parts,
    checkpoint_tree,
    load_network_weights,
    put_stats_state,
    restore_rng_state,
    run_config_json,
)

__all__ = ["BUFFER_ITEM", "CHECKPOINT_ITEM", "DataManager"]

logger = logging.getLogger(__name__)

_REMOTE_CHECK_S = 30.0


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
        clock: Any = time.time,
    ) -> None:
        register_safe_globals()  # what its steps may pickle loads under the safe default
        self.persist_config = persist_config
        self.train_config = train_config
        self.run_name = train_config.RUN_NAME
        self.run_dir = persist_config.get_run_base_dir(self.run_name)
        self.checkpoint_dir = self.run_dir / persist_config.CHECKPOINT_SAVE_DIR_NAME
        self._clock = clock
        self.manager = CheckpointManager(self.checkpoint_dir, self._options(), clock=clock)
        self._checkpoint_policy: SavePolicy = SaveEvery(train_config.CHECKPOINT_SAVE_FREQ_STEPS)
        if train_config.CHECKPOINT_SAVE_FREQ_SECONDS is not None:
            seconds = SaveInterval(train_config.CHECKPOINT_SAVE_FREQ_SECONDS)
            self._checkpoint_policy = self._checkpoint_policy | seconds
        # Wall-time saving counts from the last checkpoint saved by this manager, or from
        # its creation: a resumed run does not save at its first step.
        self._last_checkpoint_step: int | None = None
        self._last_checkpoint_time: float = clock()
        self._warned_best_metric = False

    def _options(self) -> CheckpointManagerOptions:
        persist = self.persist_config
        retention: RetentionPolicy = KeepLatest(persist.KEEP_LATEST_CHECKPOINTS)
        if persist.KEEP_BEST_CHECKPOINTS:
            best = persist.KEEP_BEST_CHECKPOINTS
            # Steps without the metric (or the flag) are not kept on these parts' account.
            retention |= KeepBest(best, persist.BEST_METRIC, persist.BEST_MODE, keep_unranked=False)
            # is_best saves carry the metric is_best=1: ties go to the newer step.
            retention |= KeepBest(best, BEST_FLAG, "max", keep_unranked=False)
        if persist.KEEP_EVERY_STEPS:
            retention |= KeepEvery(steps=persist.KEEP_EVERY_STEPS)
        sync = None
        if persist.MLFLOW_SYNC:
            local = persist.MLFLOW_TRACKING_URI_OVERRIDE is None
            if local:
                persist.get_mlflow_abs_path().mkdir(parents=True, exist_ok=True)
            sync = MlflowSyncOptions(
                tracking_uri=persist.MLFLOW_TRACKING_URI,
                experiment_name="alphatriangle",
                run_name=self.run_name,
                artifact_location=str(persist.get_mlflow_abs_path() / "artifacts")
                if local
                else None,
            )
        return CheckpointManagerOptions(
            retention=retention,
            max_pending=persist.MAX_PENDING_SAVES,
            restore_mode=persist.RESTORE_MODE,
            on_full=persist.ON_FULL,
            best_metric=persist.BEST_METRIC,
            best_mode=persist.BEST_MODE,
            mlflow=sync,
        )

    # -- context manager ------------------------------------------------------------------

    def __enter__(self) -> DataManager:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.manager.__exit__(exc_type, exc, tb)

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
        now = self._clock()
        context = SaveContext(
            global_step, now, self._last_checkpoint_step, self._last_checkpoint_time
        )
        checkpoint_due = is_final or is_best or self._checkpoint_policy.should_save(context)
        buffer_due = (
            persist.SAVE_BUFFER
            and buffer is not None
            and (is_final or global_step % persist.BUFFER_SAVE_FREQ_STEPS == 0)
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
                run_name=self.run_name,
                nn=nn,
                optimizer=optimizer,
                stats_collector_actor=stats_collector_actor,
                stats_timeout_s=persist.STATS_ACTOR_TIMEOUT_S,
                scheduler=scheduler,
                user_data=user_data,
                global_step=global_step,
                episodes_played=episodes_played,
                total_simulations_run=total_simulations_run,
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
            handle = self.manager.save(
                global_step, items=items, metrics=step_metrics, force=True, replace=replace
            )
        except StepExistsError:  # saved moments ago and still in flight (a final save, say)
            logger.info("step %d is being saved already: nothing more to save", global_step)
            return None
        if checkpoint_due and handle is not None:
            self._last_checkpoint_step, self._last_checkpoint_time = global_step, now
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
        data = run_config_json(configs)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / self.persist_config.CONFIG_FILENAME
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        temporary.replace(path)
        fsync_dir(path.parent)
        if self.manager.options.mlflow is not None:
            self.manager.upload_file(path, "config")
        return path

    # -- paths ----------------------------------------------------------------------------

    def _checkpoint_dir_of(self, run_name: str | None) -> Path:
        if run_name is None or run_name == self.run_name:
            return self.checkpoint_dir
        return (
            self.persist_config.get_run_base_dir(run_name)
            / self.persist_config.CHECKPOINT_SAVE_DIR_NAME
        )

    def _reading(self, run_name: str | None) -> AbstractContextManager[CheckpointManager]:
        """This run's manager, or a reader of another run ranking as this one does."""
        if run_name is None or run_name == self.run_name:
            return nullcontext(self.manager)
        persist = self.persist_config
        options = CheckpointManagerOptions(
            read_only=True, best_metric=persist.BEST_METRIC, best_mode=persist.BEST_MODE
        )
        return CheckpointManager(self._checkpoint_dir_of(run_name), options)

    def _step_path(self, run_name: str | None, step: int | None) -> Path:
        directory = self._checkpoint_dir_of(run_name)
        return directory if step is None else directory / step_dir_name(step)

    def best_step(self, run_name: str | None = None) -> int | None:
        """The best committed step of ``run_name`` (this run when None): the newest saved
        with ``is_best=True``, else the best by ``BEST_METRIC`` / ``BEST_MODE`` (NaN and
        infinities are never the best); None when no step is flagged or ranked."""
        with self._reading(run_name) as reader:
            return best_step(reader)

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
        if step is not None and not (is_latest or is_best):
            return self._step_path(run_name, step)
        with self._reading(run_name) as reader:
            found = (
                best_step(reader)
                if is_best and not is_latest
                else newest_holding(reader, CHECKPOINT_ITEM)
            )
        return self._step_path(run_name, found)

    def get_buffer_path(
        self, run_name: str | None = None, step: int | None = None, is_final: bool = False
    ) -> Path:
        """The step directory of ``step`` (the would-be path when it does not exist, as in
        1.0.0; ``is_final`` names the same directory), else of the newest step holding the
        buffer; the run's checkpoint directory when there is none."""
        if step is not None:
            return self._step_path(run_name, step)
        with self._reading(run_name) as reader:
            return self._step_path(run_name, newest_holding(reader, BUFFER_ITEM))

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
        train = self.train_config
        if train.LOAD_CHECKPOINT_PATH or train.LOAD_BUFFER_PATH:
            return read_explicit(train)
        if self.manager.all_steps():
            state = read_run(self.manager)
            logger.info("resuming run %s from step %s", self.run_name, step_of(state))
            return state
        if self.manager.options.mlflow is not None:
            fetched = self._load_remote()
            if fetched is not None:
                return fetched
        if train.AUTO_RESUME_LATEST:
            previous = self.find_latest_run_dir(self.run_name)
            if previous is not None:
                state = read_run_dir(
                    self.persist_config.get_run_base_dir(previous), self.persist_config
                )
                logger.info(
                    "resuming from run %s, step %s, into run %s",
                    previous,
                    step_of(state),
                    self.run_name,
                )
                return state
        logger.info("no checkpoint found for run %s: starting fresh", self.run_name)
        return LoadedTrainingState()

    def _load_remote(self) -> LoadedTrainingState | None:
        try:
            remote = self.manager.remote_steps(timeout=_REMOTE_CHECK_S)
        except Exception as exc:
            logger.warning(
                "cannot check MLflow for checkpoints of run %s (%r): going on without",
                self.run_name,
                exc,
            )
            return None
        if not remote:
            return None
        step = self.manager.fetch()
        logger.info("resuming run %s from step %d, fetched from MLflow", self.run_name, step)
        return read_run(self.manager)

    # -- applying -------------------------------------------------------------------------

    @staticmethod
    def apply_loaded_state(
        state: LoadedTrainingState,
        nn: Any,
        optimizer: torch.optim.Optimizer,
        *,
        buffer: Any = None,
        stats_collector_actor: Any = None,
        scheduler: Any = None,
    ) -> tuple[int, int, int]:
        """Put a loaded state back into the live objects: weights (into a ``NeuralNetwork``
        or a ``torch.nn.Module``), optimizer, scheduler, RNG states, buffer (columns and
        priorities; or 1.0.0's experience list), stats (a ``StatsCollectorActor`` handle or
        a plain ``StatsCollector``). Returns (global_step, episodes_played,
        total_simulations_run), zeros when fresh."""
        data = state.checkpoint_data
        counters = (0, 0, 0)
        if data is not None:
            load_network_weights(nn, data.model_state_dict)
            optimizer.load_state_dict(data.optimizer_state_dict)
            if scheduler is not None and data.scheduler_state_dict is not None:
                scheduler.load_state_dict(data.scheduler_state_dict)
            if data.rng_state is not None:
                restore_rng_state(data.rng_state)
            if stats_collector_actor is not None and data.stats_collector_state:
                put_stats_state(stats_collector_actor, data.stats_collector_state)
            counters = (data.global_step, data.episodes_played, data.total_simulations_run)
        if buffer is not None and state.buffer_data is not None:
            if state.buffer_data.buffer_state is not None:
                buffer.load_state_dict(state.buffer_data.buffer_state)
            elif state.buffer_data.buffer_list:
                buffer.add_batch(state.buffer_data.buffer_list)
        return counters
