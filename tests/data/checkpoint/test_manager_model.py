"""A stateful model of the manager: random sequences of save / restore / delete / close and
reopen checked against a plain dict of step to state (hypothesis ``RuleBasedStateMachine``)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import assert_tree_equal
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from alphatriangle.data import (
    CheckpointManager,
    CheckpointManagerOptions,
    CheckpointNotFoundError,
    KeepAll,
    StepExistsError,
)

OPTIONS = CheckpointManagerOptions(retention=KeepAll())
steps = st.integers(0, 6)


class ManagerModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="manager-model-"))
        self.manager = CheckpointManager(self.directory, OPTIONS)
        self.model: dict[int, Any] = {}

    def teardown(self) -> None:
        self.manager.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    @rule(step=steps, value=st.integers(-100, 100), replace=st.booleans())
    def save(self, step: int, value: int, replace: bool) -> None:
        state = {"w": torch.full((3,), float(value)), "value": value, "tag": f"s{step}"}
        if step in self.model and not replace:
            with pytest.raises(StepExistsError):
                self.manager.save(step, state, force=True)
            return
        handle = self.manager.save(step, state, force=True, replace=replace)
        assert handle is not None
        handle.result(10)
        self.model[step] = state

    @rule(step=steps)
    def restore(self, step: int) -> None:
        if step not in self.model:
            with pytest.raises(CheckpointNotFoundError):
                self.manager.restore(step)
            return
        assert_tree_equal(self.manager.restore(step), self.model[step])

    @precondition(lambda self: bool(self.model))
    @rule()
    def restore_newest(self) -> None:
        assert_tree_equal(self.manager.restore(), self.model[max(self.model)])

    @rule(step=steps)
    def delete(self, step: int) -> None:
        if step not in self.model:
            with pytest.raises(CheckpointNotFoundError):
                self.manager.delete(step)
            return
        self.manager.delete(step)
        del self.model[step]

    @rule()
    def close_and_reopen(self) -> None:
        self.manager.close()
        self.manager = CheckpointManager(self.directory, OPTIONS)

    @invariant()
    def steps_are_the_models(self) -> None:
        assert self.manager.all_steps() == sorted(self.model)
        assert self.manager.latest_step() == (max(self.model) if self.model else None)


ManagerModel.TestCase.settings = settings(max_examples=12, stateful_step_count=12, deadline=None)
test_manager_model = ManagerModel.TestCase
