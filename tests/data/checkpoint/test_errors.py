from __future__ import annotations

import pickle

import pytest

from alphatriangle.data import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointNotFoundError,
    LockTimeoutError,
    StepExistsError,
    UnsafeObjectError,
)


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (CheckpointCorruptError, ValueError),
        (CheckpointNotFoundError, FileNotFoundError),
        (StepExistsError, FileExistsError),
        (LockTimeoutError, TimeoutError),
        (UnsafeObjectError, pickle.UnpicklingError),
    ],
)
def test_errors_inherit_their_builtin_and_survive_pickling(
    cls: type[CheckpointError], builtin: type[Exception]
) -> None:
    error = cls("step 7 is broken", path="/runs/x/checkpoints/step_000000007", step=7)
    assert isinstance(error, CheckpointError) and isinstance(error, builtin)
    assert isinstance(error, Exception)
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is cls
    assert (str(again), again.path, again.step) == (str(error), error.path, 7)
