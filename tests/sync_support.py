"""A real MLflow tracking server and a fault-injecting TCP proxy, for the sync tests.

The proxy listens on a loopback port and forwards to the server. It can refuse everything
(``down``: each connection is closed as soon as it is accepted), cut connections in the
middle of a request (``cut_fraction``: the chance, seeded, that any chunk of up to 64 KiB a
client sends is where its connection is cut), and hold any request
whose first line contains one of ``hold`` (never answered, until the proxy stops). Its
counters say what it did, so that a test can check it really injected faults.
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


def start_mlflow_server(root: Path) -> MlflowServer:
    """``mlflow server`` with a SQLite store and artifacts served over HTTP, one worker, on
    a free loopback port; returns once it answers /health."""
    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    log = (root / "server.log").open("wb")
    process = subprocess.Popen(
        [
            str(mlflow), "server",
            "--backend-store-uri", f"sqlite:///{root / 'store.db'}",
            "--artifacts-destination", str(root / "artifacts"),
            "--serve-artifacts",
            "--host", "127.0.0.1",
            "--port", str(port),
            "--workers", "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
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
