"""Save policies (``save_decision.py``) decided from a :class:`SaveContext` alone; their use
by the manager (and parity with Orbax's and Lightning's) is in ``test_parity.py``."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alphatriangle.data import (
    AllSave,
    AnySave,
    SaveContext,
    SaveEvery,
    SaveInitial,
    SaveInterval,
    SaveOnSteps,
    SaveWhen,
)


def _context(step: int, now: float = 100.0, last: tuple[int, float] | None = None) -> SaveContext:
    return SaveContext(
        step=step,
        now=now,
        last_step=None if last is None else last[0],
        last_time=None if last is None else last[1],
    )


def test_each_policy_decides_from_the_context() -> None:
    assert SaveEvery(steps=5).should_save(_context(10))
    assert not SaveEvery(steps=5).should_save(_context(11))
    assert SaveOnSteps([3, 8]).should_save(_context(8))
    assert not SaveOnSteps([3, 8]).should_save(_context(9))
    assert SaveInterval(seconds=30).should_save(_context(1))  # no save yet
    assert SaveInterval(seconds=30).should_save(_context(2, now=130.0, last=(1, 100.0)))
    assert not SaveInterval(seconds=30).should_save(_context(2, now=129.0, last=(1, 100.0)))
    assert SaveInitial().should_save(_context(4))
    assert not SaveInitial().should_save(_context(4, last=(3, 0.0)))
    assert SaveWhen(lambda step: step == 7).should_save(_context(7))


def test_composition_flattens() -> None:
    a, b, c = SaveEvery(steps=2), SaveEvery(steps=3), SaveInitial()
    assert a | b | c == AnySave((a, b, c))
    assert (a & b) & c == AllSave((a, b, c))
    assert (a | b) & c == AllSave((AnySave((a, b)), c))
    with pytest.raises(TypeError, match="compose"):
        _ = a | 3  # type: ignore[operator]


@given(st.integers(0, 10_000), st.integers(1, 50), st.integers(1, 50))
def test_or_and_and_are_any_and_all(step: int, m: int, n: int) -> None:
    first, second = SaveEvery(steps=m), SaveEvery(steps=n)
    context = _context(step)
    both = first.should_save(context), second.should_save(context)
    assert (first | second).should_save(context) == any(both)
    assert (first & second).should_save(context) == all(both)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: SaveEvery(steps=0), "SaveEvery.steps"),
        (lambda: SaveEvery(steps=True), "SaveEvery.steps"),
        (lambda: SaveOnSteps([1, -2]), "SaveOnSteps"),
        (lambda: SaveInterval(seconds=0), "SaveInterval.seconds"),
    ],
)
def test_bad_arguments_are_refused_naming_them(build: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()  # type: ignore[operator]
