from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).parent))

settings.register_profile(
    "default",
    deadline=None,
    max_examples=40,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture
def ckpt_dir(tmp_path: Path) -> Path:
    return tmp_path / "checkpoints"


@pytest.fixture(scope="session")
def ray_local() -> Iterator[Any]:
    """One real local Ray for the whole test session (one CPU, no dashboard), in a temp dir
    of its own; shut down at the end."""
    import ray

    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's sockets live under it
    ray.init(
        num_cpus=1,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=temp,
        configure_logging=False,
    )
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real `mlflow server` for the whole test session (SQLite store, artifacts served
    over HTTP, one worker, a free loopback port); stopped at the end."""
    from sync_support import start_mlflow_server

    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[Any]:
    """One real S3-compatible store (moto, in this process, on a loopback port) for the whole
    test session, with one bucket; a test that stops it starts it again."""
    from sync_support import MotoS3

    s3 = MotoS3()
    try:
        yield s3
    finally:
        s3.stop()


@pytest.fixture(scope="session")
def mlflow_s3_direct(tmp_path_factory: pytest.TempPathFactory, moto_s3: Any) -> Iterator[Any]:
    """An MLflow server whose clients write artifacts to S3 themselves (non-proxied)."""
    from sync_support import start_mlflow_s3_server

    server = start_mlflow_s3_server(tmp_path_factory.mktemp("direct"), moto_s3, proxied=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mlflow_s3_proxied(tmp_path_factory: pytest.TempPathFactory, moto_s3: Any) -> Iterator[Any]:
    """An MLflow server that proxies artifacts to S3 (clients speak HTTP to it only)."""
    from sync_support import start_mlflow_s3_server

    server = start_mlflow_s3_server(tmp_path_factory.mktemp("proxied"), moto_s3, proxied=True)
    try:
        yield server
    finally:
        server.stop()
