from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alphatriangle.data.checkpoint.layout import (
    scan_leftovers,
    scan_steps,
    step_dir_name,
    step_from_dir_name,
    temporary_dir_name,
    trash_dir_name,
)


@given(step=st.integers(min_value=0, max_value=10**15))
def test_step_names_round_trip_and_sort(step: int) -> None:
    name = step_dir_name(step)
    assert step_from_dir_name(name) == step
    assert len(name) >= len("step_000000000")
    assert step_from_dir_name(temporary_dir_name(step)) is None
    assert step_from_dir_name(trash_dir_name(step)) is None


def test_negative_steps_are_refused() -> None:
    with pytest.raises(ValueError, match="step must be >= 0"):
        step_dir_name(-1)


@given(
    steps=st.sets(st.integers(0, 10**10), max_size=20),
    noise=st.lists(
        st.sampled_from(
            ["step_12", "step_abc", "Step_000000001", "step_000000001.bak", "notes.txt", ".lock"]
        ),
        max_size=5,
        unique=True,
    ),
)
def test_scan_finds_exactly_the_committed_steps(
    tmp_path_factory: pytest.TempPathFactory, steps: set[int], noise: list[str]
) -> None:
    directory = tmp_path_factory.mktemp("scan")
    for step in steps:
        (directory / step_dir_name(step)).mkdir()
        (directory / step_dir_name(step) / "manifest.json").write_text("{}")
        (directory / temporary_dir_name(step)).mkdir()
    for name in noise:
        (directory / name).mkdir()
    (directory / "step_900000000777").write_text("a file, not a step")
    (directory / "step_900000000778").mkdir()  # no manifest: incomplete, no step
    scan = scan_steps(directory)
    assert scan.steps == sorted(steps)
    assert scan.incomplete == [directory / "step_900000000778"]
    assert {leftover.step for leftover in scan_leftovers(directory)} == steps


def test_scanning_a_missing_directory_finds_nothing(tmp_path: Path) -> None:
    assert scan_steps(tmp_path / "absent").steps == []
    assert scan_leftovers(tmp_path / "absent") == []


def test_a_step_deleted_during_the_scan_is_no_news(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The deleter renames a step away between the listing and the look at its manifest (a
    reader reloading while the writer prunes): the step is gone, not "without a manifest"."""
    import os

    from alphatriangle.data import CheckpointManager, CheckpointManagerOptions

    for step in (1, 2):
        (tmp_path / step_dir_name(step)).mkdir()
        (tmp_path / step_dir_name(step) / "manifest.json").write_text("{}")
    real_lstat = os.lstat
    doomed = str(tmp_path / step_dir_name(1) / "manifest.json")
    trash = tmp_path / trash_dir_name(1)

    def deleting_lstat(path: str | os.PathLike[str], *args: object, **kwargs: object) -> object:
        if os.fspath(path) == doomed:  # the deleter wins the race, as retention does
            (tmp_path / step_dir_name(1)).rename(trash)
        return real_lstat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "lstat", deleting_lstat)
    scan = scan_steps(tmp_path)
    assert scan.steps == [2] and scan.incomplete == []
    monkeypatch.setattr(os, "lstat", real_lstat)
    trash.rename(tmp_path / step_dir_name(1))
    monkeypatch.setattr(os, "lstat", deleting_lstat)
    with caplog.at_level("WARNING"):
        reader = CheckpointManager(tmp_path, CheckpointManagerOptions(read_only=True))
        assert reader.all_steps() == [2]
    assert "manifest" not in caplog.text
