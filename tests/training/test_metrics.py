"""The MLflow metrics logger against a real local store and an unreachable server."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sync_support import free_port

from alphatriangle.training.metrics import MlflowMetricsLogger


def test_metrics_and_params_reach_the_run(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("e", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(experiment).info.run_id
    metrics = MlflowMetricsLogger(uri, lambda: run_id, params={"lr": 0.1}, flush_s=0.1)
    for step in range(1, 2501):
        metrics.log({"loss": 1.0 / step}, step)
    metrics.close(timeout_s=30)
    history = client.get_metric_history(run_id, "loss")
    assert sorted(m.step for m in history) == list(range(1, 2501))
    assert client.get_run(run_id).data.params == {"lr": "0.1"}
    # A resumed run with another value: MLflow keeps the first; the metrics still go.
    resumed = MlflowMetricsLogger(uri, lambda: run_id, params={"lr": 0.2}, flush_s=0.1)
    resumed.log({"loss": 0.0}, 2501)
    resumed.close(timeout_s=30)
    assert len(client.get_metric_history(run_id, "loss")) == 2501
    assert client.get_run(run_id).data.params == {"lr": "0.1"}


def test_an_unreachable_server_is_reported_not_raised(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast, not in minutes
    uri = f"http://127.0.0.1:{free_port()}"
    with caplog.at_level(logging.WARNING, logger="alphatriangle.training.metrics"):
        metrics = MlflowMetricsLogger(uri, lambda: "no-such-run", flush_s=0.05)
        metrics.log({"loss": 1.0}, 1)
        metrics.log({"loss": 0.5}, 2)
        metrics.close(timeout_s=60)
    messages = [r.getMessage() for r in caplog.records]
    assert any("cannot log metrics to MLflow" in m and uri in m for m in messages)
    assert any(m.startswith("2 metric values could not be sent") for m in messages)
