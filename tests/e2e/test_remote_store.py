"""Checkpoints to MLflow with artifacts in S3, against real servers on loopback: moto's S3
and an MLflow server in each mode in front of it (proxied: the server writes to S3;
non-proxied: the client does). Outages of S3, a store that never answers again, a wrong
endpoint, a missing bucket and a corrupted object: training never stops for them, nothing
committed is lost, ``close`` keeps its deadline, and what is left is reported."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import assert_tree_equal, state_for_step
from sync_support import FaultyProxy, free_port

from alphatriangle.data import (
    CheckpointManager,
    CheckpointManagerOptions,
    KeepAll,
    MlflowSyncOptions,
)

# Short backoffs and request timeouts: the scenarios take seconds, not minutes.
FAST = {"backoff_initial_s": 0.05, "backoff_max_s": 1.0, "request_timeout_s": 3.0}


def _options(uri: str, **sync: Any) -> CheckpointManagerOptions:
    return CheckpointManagerOptions(
        retention=KeepAll(), mlflow=MlflowSyncOptions(tracking_uri=uri, **{**FAST, **sync})
    )


@pytest.fixture(autouse=True)
def _client_settings_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    # Sync sets MLflow's HTTP settings in the environment when unset; undone after each test.
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def s3_env(moto_s3: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The client's S3 settings (endpoint, credentials, region); moto running again after
    the test whatever it did."""
    for name, value in moto_s3.env.items():
        monkeypatch.setenv(name, value)
    yield moto_s3
    moto_s3.start()


def _bucket_prefix(server_uri: str, run_id: str) -> str:
    """Where the run's artifacts are in the bucket, for either kind of server."""
    from mlflow.tracking import MlflowClient

    uri = str(MlflowClient(server_uri).get_run(run_id).info.artifact_uri)
    if uri.startswith("s3://"):
        return uri.removeprefix("s3://").split("/", 1)[1]
    return "proxied/" + uri.split(":", 1)[1].lstrip("/")  # mlflow-artifacts:/<exp>/<run>/...


def _assert_in_bucket(s3: Any, prefix: str, directory: Path, steps: list[int]) -> None:
    """Every file of every step is in the bucket, byte for byte."""
    for step in steps:
        local = {p.name: p.read_bytes() for p in (directory / f"step_{step:09d}").iterdir()}
        remote = s3.objects(f"{prefix}/checkpoints/step_{step:09d}/")
        assert remote == local, f"step {step}: {sorted(remote)} against {sorted(local)}"


def _causes(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        m.group(1)
        for r in caplog.records
        if text in r.getMessage() and (m := re.search(r"\((?:\w+): ([^:]+):", r.getMessage()))
    ]


@pytest.mark.slow
@pytest.mark.parametrize("case", [(False, 20.0), (True, 8.0)], ids=["direct", "proxied"])
def test_an_s3_outage_mid_run_is_ridden_out_and_every_file_lands_byte_for_byte(
    request: pytest.FixtureRequest,
    s3_env: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    case: tuple[bool, float],
) -> None:
    proxied, outage_s = case  # the server's mode, how long S3 is down
    server = request.getfixturevalue("mlflow_s3_proxied" if proxied else "mlflow_s3_direct")
    caplog.set_level(logging.INFO, logger="alphatriangle.data.checkpoint.sync")
    directory = tmp_path / "ckpt"
    options = _options(server.uri, experiment_name=f"outage-{'proxied' if proxied else 'direct'}")
    with CheckpointManager(directory, options) as manager:
        manager.save(0, state_for_step(0))
        assert manager.wait_for_uploads(timeout=60)
        s3_env.stop()
        try:
            began = time.monotonic()
            step = 1
            while time.monotonic() - began < outage_s:  # training goes on through it
                saving = time.perf_counter()
                manager.save(step, state_for_step(step))
                assert time.perf_counter() - saving < 5.0, "a save waited for the network"
                manager.wait_until_finished()  # committed locally, S3 down
                step += 1
                time.sleep(min(outage_s / 4, max(0.0, outage_s - (time.monotonic() - began))))
            assert manager.upload_status().retrying is not None, "the outage was not met"
            assert manager.pending_uploads() == list(range(1, step))
        finally:
            s3_env.start()
        assert manager.wait_for_uploads(timeout=120)
        assert manager.pending_uploads() == []
        run_id = manager.mlflow_run_id()
        steps = manager.all_steps()
    assert steps == list(range(step))
    _assert_in_bucket(s3_env, _bucket_prefix(server.uri, run_id), directory, steps)
    causes = _causes(caplog, "cannot reach the artifact store")
    assert causes and len(causes) == len(set(causes)), causes  # each cause logged once
    assert any("answers again" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_a_wrong_endpoint_never_stops_training_and_the_next_process_uploads(
    mlflow_s3_direct: Any,
    s3_env: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typer.testing import CliRunner

    from alphatriangle.cli import app

    directory = tmp_path / "ckpt"
    config = tmp_path / "config.json"
    config.write_text('{"lr": 0.1}')
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    options = _options(mlflow_s3_direct.uri, experiment_name="wrong", close_timeout_s=1.0)
    manager = CheckpointManager(directory, options)
    manager.upload_file(config, "config")  # the run's configuration: never raises either
    for step in range(3):
        manager.save(step, state_for_step(step))
    manager.wait_until_finished()
    deadline = time.monotonic() + 60
    while manager.upload_status().retrying is None and time.monotonic() < deadline:
        time.sleep(0.05)  # the uploader first creates the run on the server, then meets S3
    assert not manager.wait_for_uploads(timeout=0.5)
    closing = time.monotonic()
    manager.close()
    assert time.monotonic() - closing < 1.0 + 2.0, "close did not keep its deadline"
    status = manager.upload_status()
    assert status.pending == (0, 1, 2)
    assert status.retrying is not None and "ConnectionRefusedError" in status.retrying
    assert "config/config.json" in status.files
    assert "steps [0, 1, 2] are not uploaded yet" in str(status)
    # Said once per cause, not once per file or retry.
    assert _causes(caplog, "cannot reach the artifact store") == ["ConnectionRefusedError"]
    ledger = json.loads((directory / ".uploads.json").read_text())
    assert ledger["pending"] == [0, 1, 2] and "ConnectionRefusedError" in ledger["reason"]
    listed = CliRunner().invoke(app, ["ckpt", "list", str(directory)])
    assert listed.exit_code == 0, listed.output
    assert listed.output.count("pending upload (transient: ConnectionRefusedError") == 3

    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_env.endpoint)
    with CheckpointManager(directory, _options(mlflow_s3_direct.uri)) as manager:
        assert manager.wait_for_uploads(timeout=60)
        run_id = manager.mlflow_run_id()
    _assert_in_bucket(s3_env, _bucket_prefix(mlflow_s3_direct.uri, run_id), directory, [0, 1, 2])


@pytest.mark.slow
def test_a_missing_bucket_is_permanent_reported_and_raised_only_when_asked(
    mlflow_s3_direct: Any, s3_env: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = {"experiment_name": "missing-bucket", "artifact_location": "s3://no-such-bucket/x"}
    with CheckpointManager(tmp_path / "a", _options(mlflow_s3_direct.uri, **missing)) as manager:
        for step in range(3):
            manager.save(step, state_for_step(step))
            manager.wait_until_finished()  # never raised: training goes on
        assert not manager.wait_for_uploads(timeout=60)  # returns once all failed for good
        status = manager.upload_status()
    assert status.pending == (0, 1, 2)
    assert all("permanent" in status.failures[s] for s in range(3))
    assert all("NoSuchBucket" in status.failures[s] for s in range(3))
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and "MLflow upload" in r.msg]
    assert len(errors) == 1, [r.getMessage() for r in errors]  # once per cause
    ledger = json.loads((tmp_path / "a" / ".uploads.json").read_text())
    assert sorted(ledger["failures"]) == ["0", "1", "2"]

    strict = _options(mlflow_s3_direct.uri, raise_on_permanent_failure=True, **missing)
    with (  # MLflow's or boto3's exception, whichever call met the bucket first
        pytest.raises(Exception, match="bucket does not exist"),
        CheckpointManager(tmp_path / "b", strict) as manager,
    ):
        manager.save(0, state_for_step(0))
        manager.wait_until_finished()
        manager.wait_for_uploads(timeout=60)
        manager.save(1, state_for_step(1))  # raises the failure of step 0
    with CheckpointManager(tmp_path / "b", CheckpointManagerOptions(read_only=True)) as reader:
        assert reader.all_steps() == [0]


@pytest.mark.slow
def test_resume_on_an_empty_root_skips_an_object_corrupted_in_s3(
    mlflow_s3_direct: Any, s3_env: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    options = _options(mlflow_s3_direct.uri, experiment_name="corrupt")
    with CheckpointManager(tmp_path / "src", options) as manager:
        manager.save(0, state_for_step(0))
        manager.save(1, state_for_step(1))
        assert manager.wait_for_uploads(timeout=60)
        run_id = manager.mlflow_run_id()
    key = f"{_bucket_prefix(mlflow_s3_direct.uri, run_id)}/checkpoints/step_000000001/state.data"
    client = s3_env.client()
    raw = bytearray(client.get_object(Bucket=s3_env.bucket, Key=key)["Body"].read())
    raw[len(raw) // 2] ^= 0x01
    client.put_object(Bucket=s3_env.bucket, Key=key, Body=bytes(raw))
    fetch = _options(mlflow_s3_direct.uri, run_id=run_id)
    with CheckpointManager(tmp_path / "empty", fetch) as manager:
        assert manager.fetch() == 0
        assert manager.all_steps() == [0]
        assert_tree_equal(manager.restore(), state_for_step(0))
    assert "remote step 1 is corrupt" in caplog.text


_CLOSE_WITH_A_HUNG_STORE = """
import sys, threading, time
from alphatriangle.data import CheckpointManager, CheckpointManagerOptions, KeepAll
from alphatriangle.data import MlflowSyncOptions
sync = MlflowSyncOptions(tracking_uri=sys.argv[2], experiment_name="hung", close_timeout_s=2.0,
                         backoff_initial_s=0.05, backoff_max_s=1.0, request_timeout_s=3.0)
manager = CheckpointManager(sys.argv[1], CheckpointManagerOptions(retention=KeepAll(), mlflow=sync))
manager.save(0, {"w": list(range(1000))})
assert manager.wait_for_uploads(timeout=60)
print("uploaded", flush=True)
sys.stdin.readline()
for step in (1, 2):
    manager.save(step, {"w": list(range(1000))})
manager.wait_until_finished()
print("closing", flush=True)
began = time.monotonic()
manager.close()
print(f"closed {time.monotonic() - began:.2f}", flush=True)
# What the interpreter would wait for at exit: threads that are not daemons, and the
# workers of thread pools (joined at exit, daemons or not).
from concurrent.futures import thread as pools
main = threading.main_thread()
others = [t.name for t in threading.enumerate() if not t.daemon and t is not main]
others += [t.name for t in list(pools._threads_queues) if t.is_alive()]
print("waited-for", *others, flush=True)
"""


@pytest.mark.slow
def test_close_and_exit_keep_their_deadline_when_the_store_hangs_whatever_the_client_settings(
    mlflow_s3_direct: Any, s3_env: Any, tmp_path: Path
) -> None:
    proxy = FaultyProxy(s3_env.port)
    hostile = {  # the client's own settings at their most patient: our bounds still hold
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "7",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "300",
        "AWS_MAX_ATTEMPTS": "10",
        "AWS_RETRY_MODE": "legacy",
    }
    env = {**os.environ, **s3_env.env, **hostile, "MLFLOW_S3_ENDPOINT_URL": proxy.uri}
    directory = tmp_path / "ckpt"
    worker = subprocess.Popen(
        [sys.executable, "-c", _CLOSE_WITH_A_HUNG_STORE, str(directory), mlflow_s3_direct.uri],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert worker.stdout is not None and worker.stdin is not None
        assert worker.stdout.readline().strip() == "uploaded"
        proxy.hold = ("PUT",)  # from now on, every upload hangs, never answered
        worker.stdin.write("go\n")
        worker.stdin.flush()
        assert worker.stdout.readline().strip() == "closing"
        closing = time.monotonic()
        closed = worker.stdout.readline().split()
        waited_for = worker.stdout.readline().split()
        worker.wait(timeout=60)
        exited = time.monotonic() - closing
        stderr = worker.stderr.read() if worker.stderr is not None else ""
    finally:
        if worker.poll() is None:
            worker.kill()
        proxy.stop()
    assert worker.returncode == 0, stderr
    assert proxy.held > 0, "no upload reached the hung store"
    assert closed[0] == "closed" and float(closed[1]) < 2.0 + 2.0, closed
    # A request still hung at exit is on a daemon thread: nothing holds the process up (its
    # exit then takes what the interpreter's teardown takes, seconds on a loaded machine).
    assert waited_for == ["waited-for"], waited_for
    assert exited < 2.0 + 20.0, f"the process took {exited:.1f} s to exit after close began"
    print(f"close took {float(closed[1]):.2f} s, exit {exited:.2f} s after close began")
    assert json.loads((directory / ".uploads.json").read_text())["pending"] == [1, 2]
    assert "steps [1, 2] are not uploaded yet" in stderr


def _entry_point() -> list[str]:
    script = Path(sys.executable).parent / "alphatriangle"
    return [str(script)] if script.exists() else [sys.executable, "-m", "alphatriangle.cli"]


@pytest.mark.slow
def test_train_against_a_store_that_never_answers_exits_0_within_a_sigterm_grace_period(
    mlflow_s3_direct: Any, s3_env: Any, tmp_path: Path
) -> None:
    """``alphatriangle train`` with a non-proxied server whose S3 hangs every request: it
    trains, commits its final checkpoint on SIGTERM, and exits 0 within 30 s with the steps
    pending in the ledger, said in its summary and by ``ckpt list``."""
    from alphatriangle.data import CheckpointManager, CheckpointManagerOptions

    proxy = FaultyProxy(s3_env.port)
    proxy.hold = ("HTTP",)  # every request's first line: none is ever answered
    config = tmp_path / "small.yaml"
    config.write_text(
        "TrainConfig:\n  MIN_BUFFER_SIZE_TO_TRAIN: 64\n  BATCH_SIZE: 16\n  BUFFER_CAPACITY: 4000\n"
        "MCTSConfig:\n  NUM_SIMULATIONS: 4\n  MAX_GAME_MOVES: 40\n"
    )
    ray_tmp = Path(tempfile.mkdtemp(prefix="rs", dir="/tmp"))  # short: Ray's sockets
    env = {
        **os.environ,
        **s3_env.env,
        "MLFLOW_S3_ENDPOINT_URL": proxy.uri,
        "RAY_TMPDIR": str(ray_tmp),
        "PYTHONUNBUFFERED": "1",
    }
    command = [
        *_entry_point(), "train", "--root", str(tmp_path / "data"), "--preset", "quick",
        "--run-name", "hung",
        "--steps", "1000000", "--save-every", "5", "--workers", "1", "--config", str(config),
        "--tracking-uri", mlflow_s3_direct.uri,
    ]  # fmt: skip
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    directory = tmp_path / "data" / "runs" / "hung" / "checkpoints"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"the trainer exited early: {proc.communicate()[0]}"
            if directory.is_dir() and list(directory.glob("step_*")):
                break
            time.sleep(0.1)
        else:
            raise AssertionError("no checkpoint committed in time")
        proc.send_signal(signal.SIGTERM)
        terminated = time.monotonic()
        output, _ = proc.communicate(timeout=60)
        took = time.monotonic() - terminated
    finally:
        with contextlib.suppress(ProcessLookupError):  # Ray's processes go with the group
            os.killpg(proc.pid, signal.SIGKILL)
        proxy.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    print(f"SIGTERM to exit: {took:.1f} s")
    assert proc.returncode == 0, output
    assert took < 30.0, f"exit took {took:.1f} s after SIGTERM"
    assert proxy.held > 0, "no request reached the hung store"
    match = re.search(r"run hung: step 0 -> (\d+) \(stopped by SIGTERM\)", output)
    assert match, output
    final = int(match.group(1))
    with CheckpointManager(directory, CheckpointManagerOptions(read_only=True)) as reader:
        assert reader.latest_step() == final  # the final checkpoint, committed locally
    pending = json.loads((directory / ".uploads.json").read_text())["pending"]
    assert final in pending
    assert "MLflow: steps [" in output and "not uploaded yet" in output, output
    listed = subprocess.run(
        [*_entry_point(), "ckpt", "list", str(directory)], capture_output=True, text=True
    )
    assert "pending upload" in listed.stdout, listed.stdout + listed.stderr
