"""What a run resumes from: the first rule that applies.

1. ``TrainConfig.LOAD_CHECKPOINT_PATH`` (and ``LOAD_BUFFER_PATH``): a step directory of
   ours, or a 1.0.0 ``.pkl`` file; a checkpoint's step directory also gives its buffer.
2. This run's newest committed step.
3. When this run has no local step and its MLflow run holds complete steps (a new
   machine): the newest of them, fetched and verified.
4. With ``AUTO_RESUME_LATEST``: the newest previous run with checkpoints (by the
   ``YYYYmmdd_HHMMSS`` timestamp in its name), ours or 1.0.0's.
5. A fresh start (an empty :class:`LoadedTrainingState`), logged.

Guarantee: never a silent fresh start. Each rule that finds something logs what it resumes
from; a corrupt step or file is skipped for the newest intact one, loudly, and a run whose
checkpoints are all unreadable raises (:mod:`alphatriangle.data.run_reading`). MLflow that
cannot be asked within :data:`REMOTE_CHECK_S` is a warning, and the rules go on. Nothing is
applied to live objects here. Cost: listing the run (and, by the rule reached, the MLflow
run or the runs directory), then reading one checkpoint and one buffer.
"""

from __future__ import annotations

import logging

from alphatriangle.config import PersistenceConfig, TrainConfig
from alphatriangle.data.checkpoint import CheckpointManager
from alphatriangle.data.run_reading import (
    newest_other_run,
    read_explicit,
    read_run,
    read_run_dir,
    step_of,
)
from alphatriangle.data.schemas import LoadedTrainingState

__all__ = ["REMOTE_CHECK_S", "resume_state"]

logger = logging.getLogger(__name__)

REMOTE_CHECK_S = 30.0  # how long rule 3 waits for MLflow to list the run's steps


def resume_state(
    manager: CheckpointManager, persist: PersistenceConfig, train: TrainConfig
) -> LoadedTrainingState:
    """The state the run ``train.RUN_NAME`` (written by ``manager``) resumes from, by the
    rules of the module docstring."""
    run_name = train.RUN_NAME
    if train.LOAD_CHECKPOINT_PATH or train.LOAD_BUFFER_PATH:
        return read_explicit(train)
    if manager.all_steps():
        state = read_run(manager)
        logger.info("resuming run %s from step %s", run_name, step_of(state))
        return state
    if manager.options.mlflow is not None:
        fetched = _from_remote(manager, run_name)
        if fetched is not None:
            return fetched
    if train.AUTO_RESUME_LATEST:
        previous = newest_other_run(persist, run_name)
        if previous is not None:
            state = read_run_dir(persist.get_run_base_dir(previous), persist)
            logger.info(
                "resuming from run %s, step %s, into run %s", previous, step_of(state), run_name
            )
            return state
    logger.info("no checkpoint found for run %s: starting fresh", run_name)
    return LoadedTrainingState()


def _from_remote(manager: CheckpointManager, run_name: str) -> LoadedTrainingState | None:
    """Rule 3: the newest complete step of the run's MLflow run, fetched; None when there
    is none or MLflow does not answer (a warning)."""
    try:
        remote = manager.remote_steps(timeout=REMOTE_CHECK_S)
    except Exception as exc:
        logger.warning(
            "cannot check MLflow for checkpoints of run %s (%r): going on without",
            run_name,
            exc,
        )
        return None
    if not remote:
        return None
    step = manager.fetch()
    logger.info("resuming run %s from step %d, fetched from MLflow", run_name, step)
    return read_run(manager)
