"""The engine's options for a run, from alphatriangle's configs.

- Retention: ``KEEP_LATEST_CHECKPOINTS`` newest; with ``KEEP_BEST_CHECKPOINTS``, as many best
  by ``BEST_METRIC`` / ``BEST_MODE`` and as many newest flagged ``is_best`` (the flag is the
  metric :data:`BEST_FLAG` = 1); every ``KEEP_EVERY_STEPS``-th.
- Queueing and restore: ``MAX_PENDING_SAVES``, ``ON_FULL``, ``RESTORE_MODE``; the best step
  ranked by ``BEST_METRIC`` / ``BEST_MODE``.
- MLflow sync (``MLFLOW_SYNC``): the experiment ``alphatriangle``, a run named as the run;
  without a tracking server, a local store under the data root (created here).
- The save policy: the DataManager's schedule (:mod:`alphatriangle.data.save_schedule`).
- Incremental saves for the replay buffer: a save writes the parts of it that changed.

Readers of other runs rank their steps the same way. Nothing is validated twice: the
engine's options check every value.
"""

from __future__ import annotations

from alphatriangle.config import PersistenceConfig
from alphatriangle.data.checkpoint import (
    CheckpointManagerOptions,
    KeepBest,
    KeepEvery,
    KeepLatest,
    MlflowSyncOptions,
    RetentionPolicy,
    SavePolicy,
)
from alphatriangle.data.state_trees import BUFFER_ITEM

__all__ = ["BEST_FLAG", "reader_options", "writer_options"]

BEST_FLAG = "is_best"  # the metric an is_best=True save carries (1.0.0's flag)


def _retention(persist: PersistenceConfig) -> RetentionPolicy:
    retention: RetentionPolicy = KeepLatest(persist.KEEP_LATEST_CHECKPOINTS)
    if persist.KEEP_BEST_CHECKPOINTS:
        best = persist.KEEP_BEST_CHECKPOINTS
        # Steps without the metric (or the flag) are not kept on these parts' account.
        retention |= KeepBest(best, persist.BEST_METRIC, persist.BEST_MODE, keep_unranked=False)
        # is_best saves carry the metric is_best=1: ties go to the newer step.
        retention |= KeepBest(best, BEST_FLAG, "max", keep_unranked=False)
    if persist.KEEP_EVERY_STEPS:
        retention |= KeepEvery(steps=persist.KEEP_EVERY_STEPS)
    return retention


def _sync(persist: PersistenceConfig, run_name: str) -> MlflowSyncOptions | None:
    if not persist.MLFLOW_SYNC:
        return None
    local = persist.MLFLOW_TRACKING_URI_OVERRIDE is None
    if local:
        persist.get_mlflow_abs_path().mkdir(parents=True, exist_ok=True)
    return MlflowSyncOptions(
        tracking_uri=persist.MLFLOW_TRACKING_URI,
        experiment_name="alphatriangle",
        run_name=run_name,
        artifact_location=str(persist.get_mlflow_abs_path() / "artifacts") if local else None,
    )


def writer_options(
    persist: PersistenceConfig, run_name: str, save_policy: SavePolicy
) -> CheckpointManagerOptions:
    """The options of a run's own manager (the writer)."""
    return CheckpointManagerOptions(
        retention=_retention(persist),
        save_policy=save_policy,
        max_pending=persist.MAX_PENDING_SAVES,
        restore_mode=persist.RESTORE_MODE,
        on_full=persist.ON_FULL,
        best_metric=persist.BEST_METRIC,
        best_mode=persist.BEST_MODE,
        mlflow=_sync(persist, run_name),
        incremental=frozenset({BUFFER_ITEM}) if persist.INCREMENTAL_BUFFER_SAVES else False,
    )


def reader_options(persist: PersistenceConfig | None = None) -> CheckpointManagerOptions:
    """A read-only manager's options, ranking steps as ``persist`` says (the engine's
    defaults without it)."""
    if persist is None:
        return CheckpointManagerOptions(read_only=True)
    return CheckpointManagerOptions(
        read_only=True, best_metric=persist.BEST_METRIC, best_mode=persist.BEST_MODE
    )
