"""A real MLflow tracking server, a real S3-compatible store (moto) that can go down and
come back with its data, and a fault-injecting TCP proxy, for the sync tests.

The proxy listens on a loopback port and forwards to the server. It can refuse everything
(``down``: each connection is closed as soon as it is accepted), cut connections in the
middle of a request (``cut_fraction``: the chance, seeded, that any chunk of up to 64 KiB a
client sends is where its connection is cut), and hold any request
whose first line contains one of ``hold`` (never answered, until the proxy stops). Its
counters say what it did, so that a test can check it really injected faults.

:class:`MotoS3` serves moto's S3 in this process on a loopback port; ``stop`` closes its
listener (an outage: every new connection is refused) and ``start`` opens it again on the
same port, the objects kept (moto's backend lives in the process, not in the listener).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class MlflowServer:
    uri: str
    artifacts: Path
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=20)


def start_mlflow_server(
    root: Path, *, artifacts: list[str] | None = None, env: dict[str, str] | None = None
) -> MlflowServer:
    """``mlflow server`` with a SQLite store, one worker, on a free loopback port; returns
    once it answers /health. Artifacts: served over HTTP from ``root/artifacts`` unless
    ``artifacts`` gives the server's artifact flags (an S3 destination, say), with ``env``
    added to its environment."""
    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    log = (root / "server.log").open("wb")
    if artifacts is None:
        artifacts = ["--artifacts-destination", str(root / "artifacts"), "--serve-artifacts"]
    process = subprocess.Popen(
        [
            str(mlflow), "server",
            "--backend-store-uri", f"sqlite:///{root / 'store.db'}",
            *artifacts,
            "--host", "127.0.0.1",
            "--port", str(port),
            "--workers", "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,  # the server's own children die with it
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    return MlflowServer(uri, root / "artifacts", process)
        except OSError:
            time.sleep(0.3)
    MlflowServer(uri, root / "artifacts", process).stop()
    raise RuntimeError("mlflow server did not answer /health within 90 s")


class FaultyProxy:
    """A TCP proxy on loopback in front of ``target_port`` (see the module docstring)."""

    def __init__(self, target_port: int, *, seed: int = 0) -> None:
        self.target_port = target_port
        self.down = False
        self.cut_fraction = 0.0
        self.hold: tuple[str, ...] = ()
        self.refused = self.cut = self.held = self.forwarded = 0
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self.port = int(self._server.getsockname()[1])
        self.uri = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with self._lock:
            down = self.down
            cut = not down and self._random.random() < self.cut_fraction
        if down:
            with self._lock:
                self.refused += 1
            client.close()
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=30)
        except OSError:
            client.close()
            return
        client.settimeout(30)
        try:
            first = client.recv(65536)
            line = first.split(b"\r\n", 1)[0].decode(errors="replace")
            if any(marker in line for marker in self.hold):
                with self._lock:
                    self.held += 1
                self._stopping.wait()  # never answered
                return
            if cut:
                upstream.sendall(first[: max(1, len(first) // 2)])
                with self._lock:
                    self.cut += 1
                return  # both sides closed below, mid-request
            upstream.sendall(first)
            with self._lock:
                self.forwarded += 1
            back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
            back.start()
            self._pump_requests(client, upstream)
            back.join(timeout=60)
        except OSError:
            pass
        finally:
            client.close()
            upstream.close()

    def _pump_requests(self, client: socket.socket, upstream: socket.socket) -> None:
        """Forward what the client sends; each chunk may be the one where the connection is
        cut (kept-alive connections carry many requests: each gets its chance)."""
        while data := client.recv(65536):
            if any(marker.encode() in data for marker in self.hold):
                with self._lock:
                    self.held += 1
                self._stopping.wait()  # never answered
                return
            with self._lock:
                cut = self._random.random() < self.cut_fraction
                if cut:
                    self.cut += 1
            if cut:
                upstream.sendall(data[: len(data) // 2])
                for side in (client, upstream):  # both ends see the cut at once
                    with contextlib.suppress(OSError):
                        side.shutdown(socket.SHUT_RDWR)
                return
            upstream.sendall(data)
        upstream.shutdown(socket.SHUT_WR)

    def stop(self) -> None:
        self._stopping.set()
        self._server.close()
        self._thread.join(timeout=5)


def _pump(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
        target.shutdown(socket.SHUT_WR)
    except OSError:
        pass


S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class MotoS3:
    """moto's S3 on a loopback port of this process (see the module docstring). Each
    connection carries one request (HTTP/1.0), so that an outage reaches every client at
    once instead of sparing kept-alive connections."""

    def __init__(self, bucket: str = "alphatriangle") -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.bucket = bucket
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.start()
        self.client().create_bucket(Bucket=bucket)

    @property
    def env(self) -> dict[str, str]:
        """What a client (or a server) needs to reach this store."""
        return {**S3_CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL": self.endpoint}

    def start(self) -> None:
        """Open the listener (again); nothing when it is open."""
        if self._server is not None:
            return
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        class OneRequestPerConnection(MotoRequestHandler):  # type: ignore[misc]
            protocol_version = "HTTP/1.0"

            def log_request(self, *args: Any, **kwargs: Any) -> None:
                pass

        app = DomainDispatcherApplication(create_backend_app)
        deadline = time.monotonic() + 30
        while True:  # the port may linger a moment after stop
            try:
                self._server = make_server(
                    "127.0.0.1", self.port, app, True, request_handler=OneRequestPerConnection
                )
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """The outage: the listener closes; the objects stay."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=30)

    def client(self) -> Any:
        import boto3

        return boto3.session.Session(**{
            "aws_access_key_id": S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            "region_name": S3_CREDENTIALS["AWS_DEFAULT_REGION"],
        }).client("s3", endpoint_url=self.endpoint)  # fmt: skip

    def objects(self, prefix: str) -> dict[str, bytes]:
        """Every object under ``prefix``: key relative to the prefix, its bytes."""
        client = self.client()
        found = {}
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        ):
            for entry in page.get("Contents", []):
                body = client.get_object(Bucket=self.bucket, Key=entry["Key"])["Body"].read()
                found[entry["Key"][len(prefix) :].lstrip("/")] = body
        return found


def start_mlflow_s3_server(root: Path, s3: MotoS3, *, proxied: bool) -> MlflowServer:
    """An MLflow server in front of ``s3``: proxied (``--artifacts-destination s3://...``:
    the server writes to S3, clients speak HTTP to it) or not (``--default-artifact-root
    s3://... --no-serve-artifacts``: clients write to S3 themselves)."""
    prefix = f"s3://{s3.bucket}/{'proxied' if proxied else 'direct'}"
    flags = (
        ["--artifacts-destination", prefix, "--serve-artifacts"]
        if proxied
        else ["--default-artifact-root", prefix, "--no-serve-artifacts"]
    )
    return start_mlflow_server(root, artifacts=flags, env=s3.env)
