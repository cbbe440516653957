"""Incremental saves against a plain reference: random adds, priority updates, saves,
restores, deletions, retention, reopenings and writers killed with SIGKILL mid-save; every
kept step restores exactly what was saved, and nothing is left behind."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from alphatriangle.data import CheckpointManager, CheckpointManagerOptions, KeepLatest

ROWS, WIDTH, KEEP = 1024, 640, 3  # 2.5 MiB of rows: three parts, the last one short
OPTIONS = {"incremental": True, "retention": KeepLatest(KEEP)}

WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from alphatriangle.data import CheckpointManager, CheckpointManagerOptions, KeepLatest
    directory, step, source, KEEP = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    with np.load(source) as arrays:
        state = {name: arrays[name] for name in arrays.files}
    options = CheckpointManagerOptions(incremental=True, retention=KeepLatest(KEEP))
    with CheckpointManager(directory, options) as manager:
        print("open", flush=True)
        manager.save(step, state).result()
    """
)


class IncrementalSaves(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="incremental-"))
        self.rng = np.random.default_rng(0)
        self.rows = self.rng.random((ROWS, WIDTH), dtype=np.float32)
        self.priorities = self.rng.random(ROWS)
        self.cursor = 0
        self.next_step = 1
        self.kept: dict[int, dict[str, np.ndarray]] = {}  # the reference: step -> state
        self.manager: CheckpointManager | None = CheckpointManager(
            self.directory, CheckpointManagerOptions(**OPTIONS)
        )

    def _state(self) -> dict[str, np.ndarray]:
        return {
            "rows": self.rows.copy(),
            "priorities": self.priorities.copy(),
            "cursor": np.array(self.cursor),
        }

    def _retain(self) -> None:
        for step in sorted(self.kept)[:-KEEP]:
            del self.kept[step]

    def _open(self) -> CheckpointManager:
        if self.manager is None:
            self.manager = CheckpointManager(self.directory, CheckpointManagerOptions(**OPTIONS))
        return self.manager

    @rule(count=st.integers(1, 300))
    def add(self, count: int) -> None:
        slots = (self.cursor + np.arange(count)) % ROWS
        self.rows[slots] = self.rng.random((count, WIDTH), dtype=np.float32)
        self.cursor = int((self.cursor + count) % ROWS)

    @rule(count=st.integers(1, 64))
    def update_priorities(self, count: int) -> None:
        self.priorities[self.rng.integers(0, ROWS, count)] = self.rng.random(count)

    @rule()
    def save(self) -> None:
        manager = self._open()
        step, self.next_step = self.next_step, self.next_step + 1
        self.kept[step] = self._state()
        manager.save(step, self.kept[step])
        manager.wait_until_finished()
        self._retain()

    @precondition(lambda self: len(self.kept) > 1)
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        step = data.draw(st.sampled_from(sorted(self.kept)[:-1]))
        self._open().delete(step)
        del self.kept[step]

    @precondition(lambda self: bool(self.kept))
    @rule(data=st.data(), mode=st.sampled_from(["mmap", "copy"]))
    def restore(self, data: st.DataObject, mode: str) -> None:
        step = data.draw(st.sampled_from(sorted(self.kept)))
        reader = CheckpointManager(
            self.directory, CheckpointManagerOptions(read_only=True, restore_mode=mode)
        )
        restored = reader.restore(step)
        for name, array in self.kept[step].items():
            np.testing.assert_array_equal(restored[name], array, err_msg=f"{name} of {step}")

    @rule()
    def reopen(self) -> None:
        if self.manager is not None:
            self.manager.close()
        self.manager = None
        self._open()

    @rule(delay=st.floats(0.0, 0.4))
    def killed_while_saving(self, delay: float) -> None:
        if self.manager is not None:
            self.manager.close()
            self.manager = None
        step, self.next_step = self.next_step, self.next_step + 1
        intended = self._state()
        source = self.directory.parent / f"{self.directory.name}.npz"
        np.savez(source, **intended)
        process = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(self.directory), str(step), str(source), str(KEEP)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None and process.stdout.readline() == "open\n"
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        source.unlink()
        manager = self._open()  # sweeps what the killed writer left
        present = set(manager.all_steps())
        if step in present:
            self.kept[step] = intended
        # The killed writer's retention may have run: only steps it would delete are gone.
        would_delete = set(sorted(self.kept)[:-KEEP])
        assert set(self.kept) - present <= would_delete
        assert present <= set(self.kept)
        self.kept = {s: state for s, state in self.kept.items() if s in present}

    @invariant()
    def the_steps_are_the_references_and_nothing_is_left_behind(self) -> None:
        if self.manager is None:
            return
        assert set(self.manager.all_steps()) == set(self.kept)
        hidden = [p.name for p in self.directory.iterdir() if p.name.startswith(".step")]
        assert hidden == []

    def teardown(self) -> None:
        try:
            if self.manager is not None:
                self.manager.close()
            for step, state in self.kept.items():  # a last full check of every kept step
                reader = CheckpointManager(self.directory, CheckpointManagerOptions(read_only=True))
                reader.verify(step)
                restored: Any = reader.restore(step)
                for name, array in state.items():
                    np.testing.assert_array_equal(restored[name], array)
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


@pytest.mark.slow
def test_incremental_saves_against_a_reference() -> None:
    run = IncrementalSaves.TestCase
    run.settings = settings(
        max_examples=4,
        stateful_step_count=10,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    run().runTest()
