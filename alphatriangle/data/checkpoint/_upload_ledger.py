"""The upload ledger and the upload report: which committed steps still wait for their
upload, the run they go to, and why they wait.

``.uploads.json`` in the checkpoint directory, written atomically (temporary file, fsync,
rename, fsync of the directory): a process that dies, SIGKILL included, leaves the old
ledger or the new one, whole. Fields: ``pending`` (steps), ``run_id``, ``failures`` (step:
the permanent failure that stopped its upload), ``reason`` (the last transient failure
met). An unreadable ledger is reported and every local step checked again. Cost: one small
file write with two fsyncs per change.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from alphatriangle.data.checkpoint.commit import write_file_atomically
from alphatriangle.data.checkpoint.errors import CheckpointError

__all__ = ["LEDGER_NAME", "UploadLedger", "UploadStatus", "read_upload_status"]

logger = logging.getLogger(__name__)

LEDGER_NAME = ".uploads.json"


@dataclass(frozen=True)
class UploadStatus:
    """What is not uploaded yet, and why: ``pending`` steps (the ledger), ``failures``
    (step: the permanent failure that stopped its upload, here or in an earlier process),
    ``retrying`` (the transient failure being retried now, or the last one met before
    ``close``), ``files`` (other files, a run's configuration, not uploaded: their reason)."""

    pending: tuple[int, ...] = ()
    failures: Mapping[int, str] = field(default_factory=dict)
    retrying: str | None = None
    files: Mapping[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.pending or self.files)

    def one_line(self) -> str:
        """:meth:`__str__` on one line, for a log."""
        return str(self).replace("\n  ", "; ").replace("\n", "; ")

    def __str__(self) -> str:
        if not self:
            return "every upload completed"
        lines = []
        if self.pending:
            lines.append(f"steps {list(self.pending)} are not uploaded yet")
            reasons: dict[str, list[int]] = {}
            for step in self.pending:
                why = self.failures.get(step, self.retrying or "upload not finished")
                reasons.setdefault(why, []).append(step)
            lines += [f"  {steps}: {why}" for why, steps in reasons.items()]
        lines += [f"file {name} is not uploaded: {why}" for name, why in self.files.items()]
        return "\n".join(lines)


class UploadLedger:
    """The steps still to upload, the run they go to, and why they wait
    (``failures``: step to reason; ``reason``: the last transient failure met), in
    ``.uploads.json``."""

    def __init__(self, directory: Path, *, strict: bool = False) -> None:
        """The ledger of ``directory`` (empty when there is none). An unreadable ledger is
        logged and treated as empty, so that every step is checked again; with ``strict``,
        it raises :class:`CheckpointError` naming the file instead."""
        self.path = directory / LEDGER_NAME
        self.run_id: str | None = None
        self.pending: list[int] = []
        self.failures: dict[int, str] = {}
        self.reason: str | None = None
        self.readable = True
        try:
            self._load()
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            if strict:
                raise CheckpointError(
                    f"the upload ledger {self.path} is unreadable: {exc}", path=self.path
                ) from exc
            self.readable = False
            logger.error(
                "the upload ledger %s is unreadable (%s): re-checking every step", self.path, exc
            )

    def _load(self) -> None:
        raw = json.loads(self.path.read_bytes())
        pending = raw["pending"]
        if not isinstance(pending, list) or not all(type(s) is int for s in pending):
            raise ValueError("pending is not a list of steps")
        run_id = raw.get("run_id")
        self.run_id = run_id if isinstance(run_id, str) else None
        self.pending = sorted(set(pending))
        failures = raw.get("failures") or {}
        self.failures = {int(k): str(v) for k, v in failures.items() if int(k) in self.pending}
        reason = raw.get("reason")
        self.reason = reason if isinstance(reason, str) else None

    def save(self) -> None:
        """Write atomically: a crash leaves the old ledger or the new one, whole."""
        self.failures = {s: why for s, why in self.failures.items() if s in self.pending}
        data = json.dumps(
            {
                "version": 1,
                "run_id": self.run_id,
                "pending": self.pending,
                "failures": {str(s): why for s, why in sorted(self.failures.items())},
                "reason": self.reason if self.pending else None,
            }
        )
        write_file_atomically(self.path, data.encode())


def read_upload_status(directory: Path) -> UploadStatus | None:
    """What the upload ledger of ``directory`` records, read without a manager (for listing
    tools; a writer's own status is ``CheckpointManager.upload_status``): None when there is
    no ledger (the directory is not synced, or every upload completed long ago);
    :class:`CheckpointError` naming the file when it is unreadable."""
    if not (directory / LEDGER_NAME).exists():
        return None
    ledger = UploadLedger(directory, strict=True)
    return UploadStatus(
        pending=tuple(ledger.pending), failures=dict(ledger.failures), retrying=ledger.reason
    )
