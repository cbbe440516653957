"""MLflow sync against a real tracking server and a real bad network (a fault-injecting
proxy on loopback): every committed step reaches the server complete, no save waits for the
network, and nothing pending is lost to an outage or a SIGKILL."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import assert_tree_equal, python, state_for_step
from pydantic import ValidationError
from sync_support import FaultyProxy, free_port

from alphatriangle.data import (
    CheckpointCorruptError,
    CheckpointManager,
    CheckpointManagerOptions,
    KeepAll,
    MlflowSyncOptions,
)
from alphatriangle.data.checkpoint import UploadStatus
from alphatriangle.data.checkpoint._remote_errors import describe
from alphatriangle.data.checkpoint.sync import LEDGER_NAME, UploadLedger, is_transient

FAST = {"backoff_initial_s": 0.05, "backoff_max_s": 0.5}


@pytest.fixture(autouse=True)
def _no_client_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    # MLflow's own HTTP retries off: every retry seen here is ours.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def _options(uri: str, **sync: Any) -> CheckpointManagerOptions:
    return CheckpointManagerOptions(
        retention=KeepAll(), mlflow=MlflowSyncOptions(tracking_uri=uri, **{**FAST, **sync})
    )


def _server_files(server: Any, run_id: str, step: int) -> dict[str, Path]:
    found = list(server.artifacts.glob(f"*/{run_id}/artifacts/checkpoints/step_{step:09d}/*"))
    return {path.name: path for path in found}


@pytest.mark.slow
def test_every_step_reaches_the_server_through_an_outage_and_cut_connections(
    mlflow_server: Any, tmp_path: Path
) -> None:
    proxy = FaultyProxy(int(mlflow_server.uri.rsplit(":", 1)[1]), seed=7)
    proxy.down = True  # an outage at the start
    try:
        with CheckpointManager(tmp_path / "a", _options(proxy.uri, experiment_name="faults")) as m:
            for step in range(5):
                began = time.perf_counter()
                m.save(step, state_for_step(step))
                assert time.perf_counter() - began < 5.0, "a save waited for the network"
            m.wait_until_finished()
            assert m.all_steps() == list(range(5))  # committed locally during the outage
            assert m.pending_uploads() == list(range(5))
            deadline = time.monotonic() + 60
            while proxy.refused < 3 and time.monotonic() < deadline:
                time.sleep(0.05)  # the uploader really met the outage, and retried
            proxy.down = False
            proxy.cut_fraction = 0.05  # then connections cut mid-request, now and then
            assert m.wait_for_uploads(timeout=180)
            assert m.pending_uploads() == []
            run_id = m._sync.ledger.run_id  # type: ignore[union-attr]
        assert proxy.refused > 0 and proxy.cut > 0, "the proxy injected no fault"
    finally:
        proxy.stop()
    assert run_id is not None
    fetched = CheckpointManager(tmp_path / "b", _options(mlflow_server.uri, run_id=run_id))
    with fetched:
        assert fetched.remote_steps() == list(range(5))
        for step in range(5):
            assert fetched.fetch(step) == step
            assert_tree_equal(fetched.restore(step), state_for_step(step))


@pytest.mark.slow
def test_a_server_down_for_the_whole_run_leaves_uploads_to_a_later_process(
    mlflow_server: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "ckpt"
    dead = f"http://127.0.0.1:{free_port()}"
    options = _options(dead, experiment_name="down", close_timeout_s=0.5)
    with CheckpointManager(directory, options) as manager:
        for step in range(3):
            manager.save(step, state_for_step(step))
        manager.wait_until_finished()
        assert manager.all_steps() == [0, 1, 2]
    assert "stay in" in caplog.text
    ledger = json.loads((directory / LEDGER_NAME).read_text())
    assert ledger["pending"] == [0, 1, 2]
    later = _options(mlflow_server.uri, experiment_name="down")
    with CheckpointManager(directory, later) as manager:
        assert manager.wait_for_uploads(timeout=120)
        assert manager.remote_steps() == [0, 1, 2]
        assert_tree_equal(manager.restore(), state_for_step(2))


@pytest.mark.slow
def test_sigkill_mid_upload_leaves_an_incomplete_remote_step_that_a_later_process_completes(
    mlflow_server: Any, tmp_path: Path
) -> None:
    directory = tmp_path / "ckpt"
    proxy = FaultyProxy(int(mlflow_server.uri.rsplit(":", 1)[1]))
    proxy.hold = ("manifest.json",)  # the manifest's upload never completes
    worker = subprocess.Popen(
        [*python(), "upload-held", str(directory), proxy.uri],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "ready"
        assert worker.stdout.readline().strip() == "committed"
        deadline = time.monotonic() + 60
        while proxy.held == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proxy.held > 0, "the upload never reached its manifest"
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
        proxy.stop()
    run_id = UploadLedger(directory).run_id
    assert run_id is not None
    partial = _server_files(mlflow_server, run_id, 0)
    assert "state.data" in partial and "manifest.json" not in partial
    data_written = partial["state.data"].stat().st_mtime_ns
    with CheckpointManager(directory, _options(mlflow_server.uri)) as manager:
        assert manager.pending_uploads() == [0]
        assert manager.wait_for_uploads(timeout=60)
        assert manager.remote_steps() == [0]
    complete = _server_files(mlflow_server, run_id, 0)
    assert "manifest.json" in complete
    assert complete["state.data"].stat().st_mtime_ns == data_written, "re-sent what was there"


@pytest.mark.slow
def test_fetch_restores_exactly_and_skips_a_remote_step_corrupted_on_the_server(
    mlflow_server: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with CheckpointManager(tmp_path / "src", _options(mlflow_server.uri, experiment_name="f")) as m:
        m.save(0, state_for_step(0))
        m.save(1, state_for_step(1))
        assert m.wait_for_uploads(timeout=60)
        run_id = m._sync.ledger.run_id  # type: ignore[union-attr]
    assert run_id is not None
    with CheckpointManager(tmp_path / "empty", _options(mlflow_server.uri, run_id=run_id)) as m:
        assert m.fetch() == 1
        assert_tree_equal(m.restore(), state_for_step(1))
    remote_data = _server_files(mlflow_server, run_id, 1)["state.data"]
    raw = bytearray(remote_data.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    remote_data.write_bytes(bytes(raw))
    with CheckpointManager(tmp_path / "again", _options(mlflow_server.uri, run_id=run_id)) as m:
        assert m.fetch() == 0
        assert m.all_steps() == [0]
        assert_tree_equal(m.restore(), state_for_step(0))
        with pytest.raises(CheckpointCorruptError, match="checksum mismatch"):
            m.fetch(1)
        assert m.all_steps() == [0]
        assert not [p for p in (tmp_path / "again").iterdir() if p.name.startswith(".step")]
    assert "remote step 1 is corrupt" in caplog.text


def test_options_are_validated() -> None:
    with pytest.raises(ValidationError, match="artifact_path"):
        MlflowSyncOptions(artifact_path="../elsewhere")
    with pytest.raises(ValidationError, match="max_attempts"):
        MlflowSyncOptions(max_attempts=0)
    with pytest.raises(ValidationError, match="backoff_max_s"):
        MlflowSyncOptions(backoff_initial_s=10, backoff_max_s=1)


def _raised(make: Callable[[], BaseException], inner: BaseException) -> BaseException:
    """``make()`` raised while ``inner`` was being handled, as the stores chain their errors."""
    try:
        try:
            raise inner
        except BaseException:
            raise make()  # noqa: B904 - the implicit chain, as the stores leave it
    except BaseException as exc:
        return exc


def _client_error(code: str, status: int) -> BaseException:
    from botocore.exceptions import ClientError

    response = {
        "Error": {"Code": code, "Message": "m"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "PutObject")  # type: ignore[arg-type]


def _foreign(module: str, name: str, **attributes: Any) -> BaseException:
    """An exception of a store client that is not installed here, by module and name."""
    cls = type(name, (Exception,), {"__module__": module})
    exc = cls("failure")
    for key, value in attributes.items():
        setattr(exc, key, value)
    return exc


def test_failures_are_classified_by_type_and_code_for_every_store() -> None:
    import requests
    import urllib3.exceptions
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import (
        ConnectionClosedError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )
    from mlflow.exceptions import MlflowException, RestException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE

    response = requests.Response()
    response.status_code = 503
    forbidden = requests.Response()
    forbidden.status_code = 403
    transient = [
        requests.ConnectionError("refused"),
        requests.Timeout("slow"),
        requests.HTTPError("503", response=response),
        urllib3.exceptions.ProtocolError("reset"),
        EndpointConnectionError(endpoint_url="http://s3"),
        ConnectionClosedError(endpoint_url="http://s3"),
        ReadTimeoutError(endpoint_url="http://s3"),
        ConnectionRefusedError(),
        *(_client_error(code, 503) for code in ("503", "SlowDown", "ServiceUnavailable")),
        _client_error("500", 500),
        _client_error("InternalError", 500),
        _client_error("502", 502),
        _client_error("504", 504),
        _client_error("RequestTimeout", 400),
        _client_error("ThrottlingException", 400),
        _raised(lambda: S3UploadFailedError("upload failed"), _client_error("SlowDown", 503)),
        RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "x"}),
        MlflowException("busy", error_code=TEMPORARILY_UNAVAILABLE),
        # MLflow around a connection error: the inner one decides.
        _raised(lambda: MlflowException("API request failed"), requests.ConnectionError("x")),
        _foreign("google.api_core.exceptions", "ServiceUnavailable"),
        _foreign("google.api_core.exceptions", "TooManyRequests"),
        _foreign("google.api_core.exceptions", "DeadlineExceeded"),
        _foreign("google.api_core.exceptions", "InternalServerError"),
        _foreign("azure.core.exceptions", "ServiceRequestError"),
        _foreign("azure.core.exceptions", "ServiceResponseError"),
        _foreign("azure.core.exceptions", "HttpResponseError", status_code=503),
        _foreign("azure.core.exceptions", "HttpResponseError", status_code=429),
    ]
    permanent = [
        *(_client_error(code, 403) for code in ("AccessDenied", "InvalidAccessKeyId")),
        _client_error("SignatureDoesNotMatch", 403),
        _client_error("ExpiredToken", 400),
        _client_error("NoSuchBucket", 404),
        _raised(lambda: S3UploadFailedError("upload failed"), _client_error("NoSuchBucket", 404)),
        # MLflow's INTERNAL_ERROR around S3's AccessDenied stays permanent.
        _raised(lambda: MlflowException("list failed"), _client_error("AccessDenied", 403)),
        NoCredentialsError(),
        requests.HTTPError("403", response=forbidden),
        RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "x"}),
        MlflowException("bad", error_code=INVALID_PARAMETER_VALUE),
        FileNotFoundError("local file"),
        ValueError("a bug"),
        _foreign("google.api_core.exceptions", "Forbidden"),
        _foreign("google.api_core.exceptions", "NotFound"),
        _foreign("azure.core.exceptions", "ClientAuthenticationError"),
        _foreign("azure.core.exceptions", "HttpResponseError", status_code=403),
    ]
    wrong = [e for e in transient if not is_transient(e)]
    wrong += [e for e in permanent if is_transient(e)]
    assert not wrong, wrong
    # Every file that fails the same way has one cause: logs say it once.
    first, _ = describe(_client_error("SlowDown", 503))
    assert first == describe(_client_error("SlowDown", 503))[0] == "ClientError SlowDown"
    cause, text = describe(EndpointConnectionError(endpoint_url="http://s3"))
    assert cause == "EndpointConnectionError" and text.startswith("transient: ")


def test_an_unreadable_ledger_rechecks_every_step(tmp_path: Path) -> None:
    (tmp_path / LEDGER_NAME).write_text("{not json")
    ledger = UploadLedger(tmp_path)
    assert not ledger.readable
    ledger.pending = [3, 5]
    ledger.save()
    assert UploadLedger(tmp_path).pending == [3, 5]
    assert not list(tmp_path.glob("*.tmp"))


def test_the_ledger_keeps_why_each_step_waits_and_reads_older_ledgers(tmp_path: Path) -> None:
    (tmp_path / LEDGER_NAME).write_text('{"version": 1, "run_id": "r", "pending": [7, 3]}')
    ledger = UploadLedger(tmp_path)  # written before reasons were kept
    assert ledger.readable and ledger.pending == [3, 7] and ledger.failures == {}
    ledger.failures = {3: "permanent: ClientError NoSuchBucket: gone", 9: "not pending"}
    ledger.reason = "transient: ConnectionRefusedError: refused"
    ledger.save()
    again = UploadLedger(tmp_path)
    assert again.failures == {3: "permanent: ClientError NoSuchBucket: gone"}
    assert again.reason == "transient: ConnectionRefusedError: refused"
    status = UploadStatus(
        pending=(3, 7), failures=again.failures, retrying=again.reason, files={"config/c": "x"}
    )
    assert str(status).splitlines() == [
        "steps [3, 7] are not uploaded yet",
        "  [3]: permanent: ClientError NoSuchBucket: gone",
        "  [7]: transient: ConnectionRefusedError: refused",
        "file config/c is not uploaded: x",
    ]
    assert not UploadStatus() and str(UploadStatus()) == "every upload completed"


def _dead_uri() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens: every upload waits


def test_retention_keeps_a_step_until_its_upload_completed(tmp_path: Path) -> None:
    from alphatriangle.data import KeepLatest

    def options(keep: bool) -> CheckpointManagerOptions:
        sync = MlflowSyncOptions(
            tracking_uri=_dead_uri(), keep_until_uploaded=keep, close_timeout_s=0.2, **FAST
        )
        return CheckpointManagerOptions(retention=KeepLatest(1), mlflow=sync)

    with CheckpointManager(tmp_path / "kept", options(keep=True)) as manager:
        for step in range(3):
            manager.save(step, {"s": step})
        manager.wait_until_finished()
        assert manager.all_steps() == [0, 1, 2]  # all pending: none deleted
    with CheckpointManager(tmp_path / "pruned", options(keep=False)) as manager:
        for step in range(3):
            manager.save(step, {"s": step})
        manager.wait_until_finished()
        assert manager.all_steps() == [2]
    # A later process drops what is gone locally from the ledger instead of failing on it.
    with CheckpointManager(tmp_path / "pruned", options(keep=False)) as manager:
        assert manager.pending_uploads() == [2]


def test_latest_and_best_keeps_only_those_pending(tmp_path: Path) -> None:
    sync = MlflowSyncOptions(
        tracking_uri=_dead_uri(), upload="latest_and_best", close_timeout_s=0.2, **FAST
    )
    options = CheckpointManagerOptions(retention=KeepAll(), best_metric="loss", mlflow=sync)
    with CheckpointManager(tmp_path / "ckpt", options) as manager:
        for step, loss in enumerate([3.0, 1.0, 2.0, 4.0]):
            manager.save(step, {"s": step}, metrics={"loss": loss})
            manager.wait_until_finished()
        assert manager.pending_uploads() == [1, 3]


@pytest.mark.slow
def test_a_local_store_needs_no_server(tmp_path: Path) -> None:
    sync = MlflowSyncOptions(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        experiment_name="local",
        artifact_location=str(tmp_path / "artifacts"),
        **FAST,
    )
    options = CheckpointManagerOptions(retention=KeepAll(), mlflow=sync)
    with CheckpointManager(tmp_path / "a", options) as manager:
        manager.save(0, state_for_step(0))
        assert manager.wait_for_uploads(timeout=60)
        run_id = manager._sync.ledger.run_id  # type: ignore[union-attr]
    fetch = CheckpointManagerOptions(mlflow=sync.model_copy(update={"run_id": run_id}))
    with CheckpointManager(tmp_path / "b", fetch) as manager:
        assert manager.fetch() == 0
        assert_tree_equal(manager.restore(), state_for_step(0))


def test_a_replaced_step_is_uploaded_again_whole(tmp_path: Path) -> None:
    """Sizes alone cannot tell a replaced step from the uploaded one: the manifest does."""
    sync = MlflowSyncOptions(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        experiment_name="local",
        artifact_location=str(tmp_path / "artifacts"),
        **FAST,
    )
    options = CheckpointManagerOptions(retention=KeepAll(), mlflow=sync)
    first, second = {"w": torch.zeros(1000)}, {"w": torch.ones(1000)}  # the same sizes
    with CheckpointManager(tmp_path / "a", options) as manager:
        manager.save(0, first)
        assert manager.wait_for_uploads(timeout=60)
        manager.save(0, second, replace=True)
        assert manager.wait_for_uploads(timeout=60)
        run_id = manager.mlflow_run_id()
    fetch = CheckpointManagerOptions(mlflow=sync.model_copy(update={"run_id": run_id}))
    with CheckpointManager(tmp_path / "b", fetch) as manager:
        assert manager.fetch() == 0
        assert_tree_equal(manager.restore(), second)


def test_the_ledger_is_read_without_a_manager(tmp_path: Path) -> None:
    from alphatriangle.data.checkpoint import CheckpointError, read_upload_status

    assert read_upload_status(tmp_path) is None  # not synced
    ledger = UploadLedger(tmp_path)
    ledger.pending, ledger.failures, ledger.reason = [4, 2], {2: "permanent: gone"}, "refused"
    ledger.save()
    status = read_upload_status(tmp_path)
    assert status == UploadStatus(
        pending=(2, 4), failures={2: "permanent: gone"}, retrying="refused"
    )
    (tmp_path / LEDGER_NAME).write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable") as info:
        read_upload_status(tmp_path)
    assert info.value.path == str(tmp_path / LEDGER_NAME)
