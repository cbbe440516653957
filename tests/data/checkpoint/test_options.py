"""The manager's options (``options.py``): validated on construction, naming the field and
the allowed range; frozen; the save decision and the best-step ranking they imply."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from alphatriangle.data import (
    CheckpointManagerOptions,
    KeepBest,
    KeepLatest,
    SaveEvery,
    SaveInterval,
)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("save_interval_steps", 0, "greater than or equal to 1"),
        ("max_pending", 0, "greater than or equal to 1"),
        ("on_full", "drop", "'wait' or 'skip'"),
        ("lock_timeout_s", -1, "greater than or equal to 0"),
        ("best_metric", "", "best_metric"),
        ("retention", "latest", "RetentionPolicy"),
        ("unknown_option", 1, "Extra inputs are not permitted"),
    ],
)
def test_bad_options_are_refused_naming_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        CheckpointManagerOptions(**{field: value})
    text = str(info.value)
    assert message in text
    assert field in text or field == "best_metric"


def test_save_policy_and_save_interval_steps_are_exclusive() -> None:
    with pytest.raises(ValidationError, match="not both"):
        CheckpointManagerOptions(save_policy=SaveInterval(seconds=5), save_interval_steps=10)


def test_a_short_signing_key_is_refused() -> None:
    with pytest.raises(ValidationError, match="at least 16 bytes"):
        CheckpointManagerOptions(signing_key=b"short")
    assert "signing_key=" not in repr(CheckpointManagerOptions(signing_key=b"k" * 16))


def test_options_are_frozen() -> None:
    options = CheckpointManagerOptions()
    with pytest.raises(ValidationError):
        options.max_pending = 4  # type: ignore[misc]


def test_the_save_decision_is_the_policy_or_the_interval() -> None:
    assert CheckpointManagerOptions().save_decision() == SaveEvery(1)
    assert CheckpointManagerOptions(save_interval_steps=7).save_decision() == SaveEvery(7)
    policy = SaveInterval(seconds=30) | SaveEvery(steps=100)
    assert CheckpointManagerOptions(save_policy=policy).save_decision() is policy


def test_the_best_ranking_is_explicit_else_the_retentions_keep_best() -> None:
    assert CheckpointManagerOptions().best_ranking() is None
    keep = KeepLatest(2) | KeepBest(3, metric="reward", mode="max")
    assert CheckpointManagerOptions(retention=keep).best_ranking() == KeepBest(3, "reward", "max")
    explicit = CheckpointManagerOptions(retention=keep, best_metric="loss")
    assert explicit.best_ranking() == KeepBest(1, "loss", "min")
