"""``DataManager``: alphatriangle 1.0.0's interface to a run's data, rebuilt on the engine.

A save: 1) decide what is due (the checkpoint by ``CHECKPOINT_SAVE_FREQ_STEPS`` or
``CHECKPOINT_SAVE_FREQ_SECONDS``, the buffer by ``BUFFER_SAVE_FREQ_STEPS``; both at a final
or best save) 2) gather the state: network, optimizer, LR scheduler, RNG states, counters,
the stats actor's state (waited for a bounded time), the replay buffer's columns 3) hand the
due items to the engine as one step: stage (``save_training_state`` returns here) → write →
commit → retain → sync to MLflow.

Resume (``load_initial_state``), first rule that applies: an explicit load path (a step
directory of ours, or a 1.0.0 ``.pkl``); else this run's newest committed step; else, when
its MLflow run holds complete steps (a new machine), the newest of them, fetched and
verified; else, with ``AUTO_RESUME_LATEST``, the newest previous run (by the timestamp in its
name), ours or 1.0.0's; else a fresh start, logged. A step or file that cannot be read is
skipped for the newest intact one with an error-level log; a run whose checkpoints are all
unreadable raises, naming them. Never a silent fresh start.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch

from alphatriangle.config import PersistenceConfig, TrainConfig
from alphatriangle.data.checkpoint import (
    CheckpointCorruptError,
    CheckpointManager,
    CheckpointManagerOptions,
    CheckpointNotFoundError,
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
)
from alphatriangle.data.checkpoint.commit import fsync_dir
from alphatriangle.data.checkpoint.layout import (
    MANIFEST_NAME,
    scan_steps,
    step_dir_name,
    step_from_dir_name,
)
from alphatriangle.data.legacy import (
    legacy_checkpoint_files,
    load_legacy_buffer,
    load_legacy_checkpoint,
    load_legacy_checkpoint_dir,
)
from alphatriangle.data.schemas import BufferData, CheckpointData, LoadedTrainingState

__all__ = ["BUFFER_ITEM", "CHECKPOINT_ITEM", "DataManager"]

logger = logging.getLogger(__name__)

CHECKPOINT_ITEM = "checkpoint"
BUFFER_ITEM = "buffer"
_CHECKPOINT_FORMAT = "alphatriangle.CheckpointData"
_BUFFER_FORMAT = "alphatriangle.BufferData"
_TIMESTAMP = re.compile(r"(\d{8}_\d{6})")
_REMOTE_CHECK_S = 30.0


def capture_rng_state() -> dict[str, Any]:
    """The RNG states of Python, NumPy (global), torch CPU and every CUDA device."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("torch_cuda") or []
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def _config_dict(config: Any) -> dict[str, Any]:
    """A pydantic config's fields (not its computed ones), as plain data."""
    return {name: getattr(config, name) for name in type(config).model_fields}


class DataManager:
    """Saves and loads a run's training state (1.0.0's interface); also a context manager.

    ``save_training_state`` returns once the state is staged (the write goes on in the
    background: its handle says when it committed); ``wait_until_finished`` waits for it and
    raises a background failure; ``close`` finishes saves and uploads (up to the sync's
    deadline) and releases the run's directory."""

    def __init__(
        self,
        persist_config: PersistenceConfig,
        train_config: TrainConfig,
        *,
        clock: Any = time.time,
    ) -> None:
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

    def _options(self) -> CheckpointManagerOptions:
        persist = self.persist_config
        retention: RetentionPolicy = KeepLatest(persist.KEEP_LATEST_CHECKPOINTS)
        if persist.KEEP_BEST_CHECKPOINTS:
            # `is_best` saves carry the metric is_best=1; others are unranked, and not kept
            # on this part's account.
            retention |= KeepBest(
                persist.KEEP_BEST_CHECKPOINTS, "is_best", "max", keep_unranked=False
            )
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
            best_metric="is_best",
            best_mode="max",
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
        the checkpoint and marks it for best-K retention and ``best_step()``."""
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
            items[CHECKPOINT_ITEM] = self._checkpoint_tree(
                nn=nn,
                optimizer=optimizer,
                stats_collector_actor=stats_collector_actor,
                scheduler=scheduler,
                user_data=user_data,
                global_step=global_step,
                episodes_played=episodes_played,
                total_simulations_run=total_simulations_run,
            )
        if buffer_due:
            items[BUFFER_ITEM] = {
                "format": _BUFFER_FORMAT,
                "version": 1,
                "buffer_state": buffer.state_dict(),
            }
        step_metrics = dict(metrics or {})
        if is_best:
            step_metrics["is_best"] = 1.0
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

    def _checkpoint_tree(
        self,
        *,
        nn: Any,
        optimizer: torch.optim.Optimizer,
        stats_collector_actor: Any,
        scheduler: Any,
        user_data: Mapping[str, Any] | None,
        global_step: int,
        episodes_played: int,
        total_simulations_run: int,
    ) -> dict[str, Any]:
        stats_state: dict[str, Any] = {}
        if stats_collector_actor is not None:
            from alphatriangle.stats import fetch_actor_state

            fetched = fetch_actor_state(
                stats_collector_actor, self.persist_config.STATS_ACTOR_TIMEOUT_S
            )
            stats_state = fetched or {}
        return {
            "format": _CHECKPOINT_FORMAT,
            "version": 1,
            "fields": {
                "run_name": self.run_name,
                "global_step": global_step,
                "episodes_played": episodes_played,
                "total_simulations_run": total_simulations_run,
                "model_config_dict": _config_dict(nn.model_config),
                "env_config_dict": _config_dict(nn.env_config),
                "model_state_dict": nn.model.state_dict(),
                "optimizer_state_dict": optimizer.state_dict(),
                "stats_collector_state": stats_state,
                "scheduler_state_dict": None if scheduler is None else scheduler.state_dict(),
                "rng_state": capture_rng_state(),
                "user_data": dict(user_data or {}),
            },
        }

    def save_run_config(self, configs: Mapping[str, Any]) -> Path:
        """Write the run's configuration as JSON (atomically: temporary file, fsync, rename,
        fsync of the directory) and upload it to the MLflow run in the background."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / self.persist_config.CONFIG_FILENAME
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        data = json.dumps(configs, indent=2, sort_keys=True, default=str).encode()
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

    def _item_path(self, item: str, run_name: str | None, step: int | None) -> Path:
        directory = self._checkpoint_dir_of(run_name)
        if step is not None:
            return directory / step_dir_name(step)
        with CheckpointManager(directory, CheckpointManagerOptions(read_only=True)) as reader:
            steps = [s for s in reversed(reader.all_steps()) if item in reader.metadata(s)["items"]]
        return directory / step_dir_name(steps[0]) if steps else directory

    def get_checkpoint_path(
        self,
        run_name: str | None = None,
        step: int | None = None,
        is_latest: bool = False,
        is_best: bool = False,
        is_final: bool = False,
    ) -> Path:
        """The step directory holding the checkpoint: of ``step``; the best (``is_best``);
        else the newest. The run's checkpoint directory when it has none."""
        if is_best and step is None and (run_name is None or run_name == self.run_name):
            step = self.manager.best_step()
        return self._item_path(CHECKPOINT_ITEM, run_name, step)

    def get_buffer_path(self, run_name: str | None = None, step: int | None = None) -> Path:
        """The step directory holding the buffer (of ``step``, else the newest)."""
        return self._item_path(BUFFER_ITEM, run_name, step)

    def find_latest_run_dir(self, current_run_name: str) -> Path | None:
        """The newest other run (by the ``YYYYmmdd_HHMMSS`` timestamp in its name, as 1.0.0
        did) that has checkpoints, ours or 1.0.0's; None when there is none."""
        runs_root = self.persist_config.get_runs_root_dir()
        if not runs_root.is_dir():
            return None
        candidates = []
        for run_dir in runs_root.iterdir():
            match = _TIMESTAMP.search(run_dir.name)
            if not match or run_dir.name == current_run_name or not run_dir.is_dir():
                continue
            checkpoints = run_dir / self.persist_config.CHECKPOINT_SAVE_DIR_NAME
            if _has_steps(checkpoints) or legacy_checkpoint_files(checkpoints, self.persist_config):
                candidates.append((match.group(1), run_dir.name, run_dir))
        return max(candidates)[2] if candidates else None

    # -- loading --------------------------------------------------------------------------

    def load_initial_state(self) -> LoadedTrainingState:
        """What to resume from, by the rules in the module docstring."""
        train = self.train_config
        if train.LOAD_CHECKPOINT_PATH or train.LOAD_BUFFER_PATH:
            return self._load_explicit()
        if self.manager.all_steps():
            state = _read_run(self.manager)
            logger.info("resuming run %s from step %s", self.run_name, _step_of(state))
            return state
        if self.manager.options.mlflow is not None:
            fetched = self._load_remote()
            if fetched is not None:
                return fetched
        if train.AUTO_RESUME_LATEST:
            previous = self.find_latest_run_dir(self.run_name)
            if previous is not None:
                state = self._load_run_dir(previous)
                logger.info(
                    "resuming from run %s, step %s, into run %s",
                    previous.name,
                    _step_of(state),
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
        return _read_run(self.manager)

    def _load_run_dir(self, run_dir: Path) -> LoadedTrainingState:
        checkpoints = run_dir / self.persist_config.CHECKPOINT_SAVE_DIR_NAME
        if _has_steps(checkpoints):
            with CheckpointManager(checkpoints, CheckpointManagerOptions(read_only=True)) as reader:
                return _read_run(reader)
        checkpoint, _ = load_legacy_checkpoint_dir(checkpoints, self.persist_config)
        buffer_file = (
            run_dir / self.persist_config.BUFFER_SAVE_DIR_NAME / self.persist_config.BUFFER_FILENAME
        )
        buffer = None
        if buffer_file.is_file():
            try:
                buffer = load_legacy_buffer(buffer_file)
            except CheckpointCorruptError as exc:
                logger.error("skipping the unreadable 1.0.0 buffer %s: %s", buffer_file, exc)
        return LoadedTrainingState(checkpoint_data=checkpoint, buffer_data=buffer)

    def _load_explicit(self) -> LoadedTrainingState:
        train = self.train_config
        checkpoint = buffer = None
        if train.LOAD_CHECKPOINT_PATH:
            checkpoint, step_dir = _load_path(Path(train.LOAD_CHECKPOINT_PATH), CHECKPOINT_ITEM)
            if not train.LOAD_BUFFER_PATH and step_dir is not None:
                buffer = _optional_buffer(step_dir)
        if train.LOAD_BUFFER_PATH:
            buffer, _ = _load_path(Path(train.LOAD_BUFFER_PATH), BUFFER_ITEM)
        logger.info("loading the explicit checkpoint %s", train.LOAD_CHECKPOINT_PATH)
        return LoadedTrainingState(checkpoint_data=checkpoint, buffer_data=buffer)

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
        """Put a loaded state back into the live objects: weights, optimizer, scheduler, RNG
        states, buffer (columns and priorities; or 1.0.0's experience list), stats actor.
        Returns (global_step, episodes_played, total_simulations_run), zeros when fresh."""
        data = state.checkpoint_data
        counters = (0, 0, 0)
        if data is not None:
            nn.set_weights(data.model_state_dict)
            optimizer.load_state_dict(data.optimizer_state_dict)
            if scheduler is not None and data.scheduler_state_dict is not None:
                scheduler.load_state_dict(data.scheduler_state_dict)
            if data.rng_state is not None:
                restore_rng_state(data.rng_state)
            if stats_collector_actor is not None and data.stats_collector_state:
                import ray

                ray.get(
                    stats_collector_actor.set_state.remote(data.stats_collector_state), timeout=60
                )
            counters = (data.global_step, data.episodes_played, data.total_simulations_run)
        if buffer is not None and state.buffer_data is not None:
            if state.buffer_data.buffer_state is not None:
                buffer.load_state_dict(state.buffer_data.buffer_state)
            elif state.buffer_data.buffer_list:
                buffer.add_batch(state.buffer_data.buffer_list)
        return counters


def _has_steps(directory: Path) -> bool:
    return bool(scan_steps(directory).steps)


def _step_of(state: LoadedTrainingState) -> int | None:
    return None if state.checkpoint_data is None else state.checkpoint_data.global_step


def _checkpoint_from_tree(tree: Mapping[str, Any], where: Path) -> CheckpointData:
    if tree.get("format") != _CHECKPOINT_FORMAT or tree.get("version") != 1:
        raise CheckpointCorruptError(f"{where} holds no alphatriangle checkpoint", path=where)
    return CheckpointData.model_validate(tree["fields"])


def _buffer_from_tree(tree: Mapping[str, Any], where: Path) -> BufferData:
    if tree.get("format") != _BUFFER_FORMAT or tree.get("version") != 1:
        raise CheckpointCorruptError(f"{where} holds no alphatriangle buffer", path=where)
    return BufferData(buffer_state=tree["buffer_state"])


def _read_run(manager: CheckpointManager) -> LoadedTrainingState:
    """The newest intact checkpoint and buffer of a run (each from the newest step holding
    it; a corrupt step is skipped loudly; all corrupt: raises)."""
    checkpoint = buffer = None
    try:
        tree = manager.restore(item=CHECKPOINT_ITEM, fallback=True)
        checkpoint = _checkpoint_from_tree(tree, manager.directory)
    except CheckpointNotFoundError:
        pass
    try:
        tree = manager.restore(item=BUFFER_ITEM, fallback=True)
        buffer = _buffer_from_tree(tree, manager.directory)
    except CheckpointNotFoundError:
        pass
    return LoadedTrainingState(checkpoint_data=checkpoint, buffer_data=buffer)


def _load_path(path: Path, item: str) -> tuple[Any, Path | None]:
    """An explicit load path: a step directory of ours, or a 1.0.0 ``.pkl``."""
    if path.is_file():
        if item == CHECKPOINT_ITEM:
            return load_legacy_checkpoint(path), None
        return load_legacy_buffer(path), None
    step = step_from_dir_name(path.name)
    if step is None or not (path / MANIFEST_NAME).is_file():
        raise CheckpointNotFoundError(
            f"{path} is neither a step directory (step_<N>/ with a manifest) nor a 1.0.0 .pkl file",
            path=path,
        )
    with CheckpointManager(path.parent, CheckpointManagerOptions(read_only=True)) as reader:
        tree = reader.restore(step, item=item)
    if item == CHECKPOINT_ITEM:
        return _checkpoint_from_tree(tree, path), path
    return _buffer_from_tree(tree, path), path


def _optional_buffer(step_dir: Path) -> BufferData | None:
    with CheckpointManager(step_dir.parent, CheckpointManagerOptions(read_only=True)) as reader:
        step = step_from_dir_name(step_dir.name)
        assert step is not None
        if BUFFER_ITEM not in reader.metadata(step)["items"]:
            return None
        return _buffer_from_tree(reader.restore(step, item=BUFFER_ITEM), step_dir)
