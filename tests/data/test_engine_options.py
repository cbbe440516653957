"""The engine's options a run's configs give: retention, ranking, queueing, sync, and the
save schedule as the save policy."""

from __future__ import annotations

from pathlib import Path

from dm_support import make_persist

from alphatriangle.config import PersistenceConfig
from alphatriangle.data import KeepBest, KeepEvery, KeepLatest, SaveEvery
from alphatriangle.data.engine_options import BEST_FLAG, reader_options, writer_options


def test_the_writer_options_follow_the_configs(tmp_path: Path) -> None:
    persist = make_persist(
        tmp_path,
        KEEP_LATEST_CHECKPOINTS=4,
        KEEP_BEST_CHECKPOINTS=2,
        KEEP_EVERY_STEPS=100,
        BEST_METRIC="val",
        BEST_MODE="max",
        MAX_PENDING_SAVES=3,
    )
    options = writer_options(persist, "run", SaveEvery(9))
    assert options.save_policy == SaveEvery(9) and options.save_interval_steps == 1
    assert options.retention == (
        KeepLatest(4)
        | KeepBest(2, "val", "max", keep_unranked=False)
        | KeepBest(2, BEST_FLAG, "max", keep_unranked=False)
        | KeepEvery(steps=100)
    )
    assert (options.best_metric, options.best_mode, options.max_pending) == ("val", "max", 3)
    assert options.mlflow is None and not options.read_only
    plain = writer_options(make_persist(tmp_path, KEEP_BEST_CHECKPOINTS=0), "run", SaveEvery(9))
    assert plain.retention == KeepLatest(PersistenceConfig().KEEP_LATEST_CHECKPOINTS)


def test_a_synced_run_without_a_server_gets_a_local_store(tmp_path: Path) -> None:
    persist = PersistenceConfig(ROOT_DATA_DIR=str(tmp_path))
    sync = writer_options(persist, "run_1", SaveEvery(1)).mlflow
    assert sync is not None and sync.run_name == "run_1"
    assert sync.experiment_name == "alphatriangle"
    assert sync.artifact_location == str(persist.get_mlflow_abs_path() / "artifacts")
    assert persist.get_mlflow_abs_path().is_dir()
    served = PersistenceConfig(
        ROOT_DATA_DIR=str(tmp_path / "other"), MLFLOW_TRACKING_URI_OVERRIDE="http://host:5000"
    )
    remote = writer_options(served, "run_1", SaveEvery(1)).mlflow
    assert remote is not None and remote.artifact_location is None
    assert remote.tracking_uri == "http://host:5000"
    assert not served.get_mlflow_abs_path().exists()


def test_readers_rank_as_the_run_does(tmp_path: Path) -> None:
    options = reader_options(make_persist(tmp_path, BEST_METRIC="val", BEST_MODE="max"))
    assert options.read_only and (options.best_metric, options.best_mode) == ("val", "max")
    assert reader_options().read_only
