"""Configuration of a :class:`~alphatriangle.data.checkpoint.manager.CheckpointManager`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from alphatriangle.data.checkpoint.retention import KeepBest, KeepLatest, RetentionPolicy
from alphatriangle.data.checkpoint.save_decision import SaveEvery, SavePolicy
from alphatriangle.data.checkpoint.signing import MIN_KEY_BYTES
from alphatriangle.data.checkpoint.sync import MlflowSyncOptions

__all__ = ["CheckpointManagerOptions"]


class CheckpointManagerOptions(BaseModel):
    """Options, validated on construction; frozen.

    - ``save_policy``: when ``save`` writes (see ``save_decision.py``):
      ``SaveEvery(steps=N)``, ``SaveOnSteps([...])``, ``SaveInterval(seconds=S)``,
      ``SaveInitial()``, ``SaveWhen(fn)``, composed with ``|`` and ``&``. Unset: every
      ``save_interval_steps`` steps (its shorthand); give one or the other.
    - ``save_interval_steps``: ``save`` writes only steps divisible by it (``force=True``
      writes any step).
    - ``max_pending``: saves in flight at once (staged, not yet committed); each has its own
      reusable staging buffer, so memory is ``max_pending`` copies of the state.
    - ``on_full``: what a save does when ``max_pending`` saves are in flight: ``"wait"`` for
      one to finish, or ``"skip"`` the step (``save`` returns None, logs a warning and records
      the step in ``skipped_steps``).
    - ``verify_on_restore``: check every file's checksum on restore (sizes are always
      checked).
    - ``restore_mode``: ``"mmap"`` (default): restored CPU tensors and arrays are views of
      the data file mapped copy-on-write (writing to them never changes the checkpoint),
      verified in one pass over the mapping; CUDA tensors stream from the mapping through
      reused pinned chunks. ``"copy"``: read into freshly allocated memory, as before.
    - ``read_only``: open as a reader: no writer lock, no sweep, no save, no deletion.
    - ``retention``: which committed steps to keep (see ``retention.py``);
      ``KeepAll()`` keeps everything.
    - ``best_metric``, ``best_mode``: what ``best_step()`` ranks by; when unset, the first
      ``KeepBest`` in ``retention`` ranks.
    - ``lock_timeout_s``: how long a second writer waits for the writer lock before
      ``LockTimeoutError``.
    - ``collective_timeout_s``: with a process group, how long a rank waits for the others
      in the manager's collectives (its own gloo groups): a rank that died makes the
      others' saves fail after at most this long.
    - ``weights_only``: the default of ``restore(weights_only=...)``. None (the default):
      pickled objects are unpickled through an allow-list (``add_safe_globals`` extends it;
      anything else raises ``UnsafeObjectError``); True: never unpickle (a step holding
      pickled objects raises ``WeightsOnlyError`` naming them); False: unpickle anything
      (trusted checkpoints only).
    - ``signing_key``: at least 16 bytes; every step written is signed (HMAC-SHA256 over the
      manifest, SHA-256 of every file) and every step restored must carry a valid signature
      (``CheckpointSignatureError`` otherwise). Never shown in the options' repr.
    - ``incremental``: True (every item) or a set of item names: write their data files as
      1 MiB parts, hard-linking every part equal to one of the newest committed step
      (``_chunks.py``): a save costs what changed.
    - ``mlflow``: upload every committed step to MLflow in the background
      (``MlflowSyncOptions``; see ``sync.py``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    save_interval_steps: int = Field(default=1, ge=1)
    save_policy: SavePolicy | None = None
    max_pending: int = Field(default=1, ge=1, le=64)
    on_full: Literal["wait", "skip"] = "wait"
    verify_on_restore: bool = True
    restore_mode: Literal["mmap", "copy"] = "mmap"
    read_only: bool = False
    retention: RetentionPolicy = Field(default_factory=lambda: KeepLatest(3))
    best_metric: str | None = None
    best_mode: Literal["min", "max"] = "min"
    lock_timeout_s: float = Field(default=5.0, ge=0.0, le=86_400.0)
    collective_timeout_s: float = Field(default=600.0, gt=0.0, le=86_400.0)
    weights_only: bool | None = None
    signing_key: bytes | None = Field(default=None, repr=False)
    incremental: bool | frozenset[str] = False
    mlflow: MlflowSyncOptions | None = None

    @model_validator(mode="after")
    def _best_metric_named(self) -> CheckpointManagerOptions:
        if self.save_policy is not None and self.save_interval_steps != 1:
            raise ValueError(
                "give save_policy or save_interval_steps, not both "
                "(save_interval_steps=N is the shorthand of save_policy=SaveEvery(steps=N))"
            )
        if self.best_metric == "":
            raise ValueError("best_metric must name a metric, or be None")
        if self.signing_key is not None and len(self.signing_key) < MIN_KEY_BYTES:
            raise ValueError(
                f"signing_key must be at least {MIN_KEY_BYTES} bytes "
                f"(got {len(self.signing_key)}): a short key can be guessed"
            )
        return self

    def save_decision(self) -> SavePolicy:
        """The policy ``save`` follows: ``save_policy``, else ``SaveEvery(save_interval_steps)``."""
        return self.save_policy or SaveEvery(self.save_interval_steps)

    def best_ranking(self) -> KeepBest | None:
        """The ranking ``best_step`` uses: the explicit ``best_metric``/``best_mode`` when
        given, else the retention's first ``KeepBest``, else None."""
        if self.best_metric is not None:
            return KeepBest(1, self.best_metric, self.best_mode)
        return next((p for p in self.retention.parts() if isinstance(p, KeepBest)), None)
