"""Training metrics to MLflow from a background thread: the loop never waits on the store.

Metrics are queued (at most ``max_queued``; beyond that the oldest are dropped, counted and
reported) and sent in batches every ``flush_s`` seconds. A failure is logged with its cause
and the batch is kept for the next try; ``close`` sends what is left, for a bounded time,
and says how much could not be sent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["MlflowMetricsLogger"]

logger = logging.getLogger(__name__)

_BATCH = 1000  # MLflow's limit of metrics per log_batch call


class MlflowMetricsLogger:
    """``log(metrics, step)`` queues; a thread sends. ``params`` are logged once, first."""

    def __init__(
        self,
        tracking_uri: str,
        run_id: Callable[[], str],
        *,
        params: Mapping[str, Any] | None = None,
        flush_s: float = 2.0,
        max_queued: int = 100_000,
    ) -> None:
        self._tracking_uri, self._resolve_run_id = tracking_uri, run_id
        self._params = dict(params or {})
        self._queue: deque[tuple[str, float, int, int]] = deque(maxlen=max_queued)
        self._dropped = 0
        self._failures = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._flush_s = flush_s
        self._client: Any = None
        self._run_id: str | None = None
        self._thread = threading.Thread(target=self._loop, name="mlflow-metrics", daemon=True)
        self._thread.start()

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        with self._lock:
            for key, value in metrics.items():
                if len(self._queue) == self._queue.maxlen:
                    self._dropped += 1
                self._queue.append((key, float(value), now, step))

    def _loop(self) -> None:
        while not self._stop.wait(self._flush_s):
            self._send()
        self._send()  # what was logged before close

    def _send(self) -> bool:
        """Send what is queued; whether all of it went."""
        from mlflow.entities import Metric, Param

        with self._lock:
            pending = list(self._queue)
            self._queue.clear()
        sent = 0
        try:
            if self._client is None:
                from mlflow.tracking import MlflowClient

                self._client = MlflowClient(tracking_uri=self._tracking_uri)
            if self._run_id is None:
                self._run_id = self._resolve_run_id()
            if self._params:
                params = [Param(k, str(v)[:500]) for k, v in self._params.items()]
                try:
                    for start in range(0, len(params), 100):
                        self._client.log_batch(self._run_id, params=params[start : start + 100])
                except Exception as exc:
                    if "Changing param values is not allowed" not in str(exc):
                        raise  # the store is unreachable: tried again at the next send
                    # A resumed run logged them before, with other values (MLflow keeps the
                    # first ones: parameters are immutable).
                    logger.info("run parameters not logged again: %s", str(exc).split("\n")[0])
                self._params = {}
            for start in range(0, len(pending), _BATCH):
                chunk = pending[start : start + _BATCH]
                metrics = [Metric(k, v, t, s) for k, v, t, s in chunk]
                self._client.log_batch(self._run_id, metrics=metrics)
                sent += len(chunk)
            return True
        except Exception as exc:
            with self._lock:  # unsent values go back in front of newer ones
                unsent = pending[sent:]
                room = max(0, (self._queue.maxlen or 0) - len(self._queue))
                self._dropped += max(0, len(unsent) - room)
                self._queue.extendleft(reversed(unsent[len(unsent) - room :] if room else []))
            self._failures += 1
            if self._failures in (1, 10) or self._failures % 100 == 0:
                logger.warning(
                    "cannot log metrics to MLflow at %s (%d failures so far; %d queued): %r",
                    self._tracking_uri,
                    self._failures,
                    len(self._queue),
                    exc,
                )
            return False

    def close(self, timeout_s: float = 10.0) -> None:
        """Send what is queued and stop, waiting at most ``timeout_s`` (a send stuck in the
        client's own retries is left to its daemon thread); report what was not sent."""
        self._stop.set()
        self._thread.join(timeout_s)
        with self._lock:
            left, dropped = len(self._queue), self._dropped
        if self._thread.is_alive():
            logger.warning(
                "MLflow at %s did not take the last metrics within %.0f s: leaving them",
                self._tracking_uri,
                timeout_s,
            )
            left = max(left, 1)
        if left or dropped:
            logger.warning(
                "%d metric values could not be sent to MLflow at %s (%d dropped from a full queue)",
                left + dropped,
                self._tracking_uri,
                dropped,
            )
