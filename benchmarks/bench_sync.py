"""MLflow sync: the upload of a step through the sync against a bare
``MlflowClient.log_artifacts`` of the same directory, and the save stall while uploads run
against the stall without sync, all against one real ``mlflow server`` on loopback.

    python benchmarks/bench_sync.py [--mb 100] [--leaves 20] [--repeats 5]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from _common import reference_state, report

from alphatriangle.data import (
    CheckpointManager,
    CheckpointManagerOptions,
    KeepLatest,
    MlflowSyncOptions,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from sync_support import start_mlflow_server  # the tests' server helper

OPTIONS = {"mb": 100.0, "leaves": 20, "repeats": 5}


def main() -> None:  # noqa: PLR0915 - one scenario, read top to bottom
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=float, default=OPTIONS["mb"])
    parser.add_argument("--leaves", type=int, default=OPTIONS["leaves"])
    parser.add_argument("--repeats", type=int, default=OPTIONS["repeats"])
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_sync_"))
    (root / "server").mkdir()
    server = start_mlflow_server(root / "server")
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(server.uri)
        run_id = client.create_run(client.create_experiment("bench")).info.run_id
        state = reference_state(args.mb, args.leaves)
        plain = CheckpointManager(root / "plain", CheckpointManagerOptions(retention=KeepLatest(2)))
        sync = MlflowSyncOptions(tracking_uri=server.uri, run_id=run_id, artifact_path="synced")
        synced = CheckpointManager(
            root / "synced", CheckpointManagerOptions(retention=KeepLatest(2), mlflow=sync)
        )
        bare: list[float] = []
        uploads: list[float] = []
        for step in range(args.repeats + 1):  # upload time, one step at a time
            handle = plain.save(step, state)
            assert handle is not None
            step_dir = handle.result()
            began = time.perf_counter()
            client.log_artifacts(run_id, str(step_dir), f"bare/{step_dir.name}")
            bare_seconds = time.perf_counter() - began
            handle = synced.save(step, state)
            assert handle is not None
            handle.result()
            committed = time.perf_counter()
            assert synced.wait_for_uploads(timeout=600)
            if step:
                bare.append(bare_seconds)
                uploads.append(time.perf_counter() - committed)
        stall_plain: list[float] = []
        stall_bare_upload: list[float] = []
        stall_synced: list[float] = []
        first = args.repeats + 1
        for step in range(first, first + args.repeats):  # stalls, uploads running meanwhile
            began = time.perf_counter()
            handle = plain.save(step, state)
            stall_plain.append(time.perf_counter() - began)
            assert handle is not None
            step_dir = handle.result()
            # The same upload load without our sync: a bare log_artifacts on another thread.
            uploading = threading.Thread(
                target=client.log_artifacts, args=(run_id, str(step_dir), f"load/{step}")
            )
            uploading.start()
            time.sleep(0.05)
            began = time.perf_counter()
            handle = plain.save(step + 1000, state)
            stall_bare_upload.append(time.perf_counter() - began)
            assert handle is not None
            handle.result()
            uploading.join()
            handle = synced.save(step, state)
            assert handle is not None
            handle.result()
            time.sleep(0.05)
            began = time.perf_counter()
            handle = synced.save(step + 1000, state)
            stall_synced.append(time.perf_counter() - began)
            assert handle is not None
            assert synced.pending_uploads(), "no upload was running: the stall proves nothing"
            assert synced.wait_for_uploads(timeout=600)
        plain.close()
        synced.close()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)

    def med(values: list[float]) -> float:
        return float(np.median(values))

    rows = [
        ("bare MlflowClient.log_artifacts of a step", med(bare), ""),
        (
            "upload through the sync (commit -> uploaded)",
            med(uploads),
            "bare MlflowClient.log_artifacts of a step",
        ),
        ("save() stall, no upload running", med(stall_plain), ""),
        (
            "save() stall, a bare log_artifacts running",
            med(stall_bare_upload),
            "save() stall, no upload running",
        ),
        ("save() stall, the sync uploading", med(stall_synced), "save() stall, no upload running"),
        (
            "  the same, to the bare upload's load",
            med(stall_synced),
            "save() stall, a bare log_artifacts running",
        ),
    ]
    report("bench_sync", rows, {"state_mb": args.mb, "repeats": args.repeats})


if __name__ == "__main__":
    main()
