"""The README's examples run as written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from alphatriangle.data import CheckpointManager, CheckpointManagerOptions

README = Path(__file__).resolve().parents[1] / "README.md"


def _example(section: str) -> str:
    """The first python block after the heading ``section``."""
    text = README.read_text()
    after = text[text.index(f"\n## {section}\n") :]
    start = after.index("```python\n") + len("```python\n")
    return after[start : after.index("\n```", start)]


@pytest.mark.slow
def test_the_checkpoint_manager_example_runs_twice_in_a_row(tmp_path: Path) -> None:
    example = tmp_path / "example.py"
    example.write_text(_example("Using the checkpoint manager"))
    directory = tmp_path / "runs" / "my_run" / "checkpoints"
    for newest in (900, 1900):  # the second run resumes after the first one's newest step
        result = subprocess.run(
            [sys.executable, str(example)], cwd=tmp_path, capture_output=True, text=True,
            timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        with CheckpointManager(directory, CheckpointManagerOptions(read_only=True)) as reader:
            assert reader.latest_step() == newest
            assert "loss" in reader.metadata(newest)["metrics"]
