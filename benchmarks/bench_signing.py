"""What signing costs: commit and restore of one state with and without a signing key.

    python benchmarks/bench_signing.py [--mb 451] [--leaves 122] [--repeats 5]

Both managers save and restore the same state, interleaved, in the same run; the ratios are
signed to unsigned. Signing adds a SHA-256 of every file (computed beside the write) and an
HMAC of the manifest; a signed restore checks SHA-256 instead of xxh3.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import reference_state, report, state_bytes, timed

from alphatriangle.data import CheckpointManager, CheckpointManagerOptions, KeepLatest

OPTIONS = {"mb": 451.0, "leaves": 122, "repeats": 5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=float, default=OPTIONS["mb"])
    parser.add_argument("--leaves", type=int, default=OPTIONS["leaves"])
    parser.add_argument("--repeats", type=int, default=OPTIONS["repeats"])
    args = parser.parse_args()
    state = reference_state(args.mb, args.leaves)
    root = Path(tempfile.mkdtemp(prefix="bench_signing_"))
    key = b"benchmark signing key, 32 bytes!"
    managers = {
        "unsigned": CheckpointManager(
            root / "plain", CheckpointManagerOptions(retention=KeepLatest(1))
        ),
        "signed": CheckpointManager(
            root / "signed", CheckpointManagerOptions(retention=KeepLatest(1), signing_key=key)
        ),
    }
    commits: dict[str, list[float]] = {name: [] for name in managers}
    restores: dict[str, list[float]] = {name: [] for name in managers}
    for step in range(args.repeats + 1):
        for name, manager in managers.items():
            began = time.perf_counter()
            handle = manager.save(step, state)
            assert handle is not None
            handle.result()
            elapsed = time.perf_counter() - began
            manager.wait_until_finished()
            manager.restore()  # warm the page cache: both restores read from memory
            restore = timed(manager.restore)
            if step:  # the first save allocates the staging buffer
                commits[name].append(elapsed)
                restores[name].append(restore)
    for manager in managers.values():
        manager.close()
    shutil.rmtree(root, ignore_errors=True)

    def med(values: list[float]) -> float:
        return float(np.median(values))

    rows = [
        ("save -> committed, unsigned", med(commits["unsigned"]), ""),
        ("save -> committed, signed", med(commits["signed"]), "save -> committed, unsigned"),
        ("restore, unsigned (xxh3 verified)", med(restores["unsigned"]), ""),
        (
            "restore, signed (SHA-256 + HMAC)",
            med(restores["signed"]),
            "restore, unsigned (xxh3 verified)",
        ),
    ]
    report(
        "bench_signing",
        rows,
        {
            "state_bytes": state_bytes(state),
            "repeats": args.repeats,
            "ranges": {
                k: [min(v), max(v)]
                for k, v in {
                    **{f"commit {n}": c for n, c in commits.items()},
                    **{f"restore {n}": r for n, r in restores.items()},
                }.items()
            },
        },
    )


if __name__ == "__main__":
    main()
