"""A DataManager run resumes under the engine's safe default restore, in a fresh process,
whatever alphatriangle objects its steps pickle."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import REPO

from alphatriangle.data._safe_globals import SAFE_GLOBALS


def test_configs_and_schemas_are_registered() -> None:
    names = {cls.__name__ for cls in SAFE_GLOBALS}
    assert {"TrainConfig", "PersistenceConfig", "CheckpointData", "BufferData"} <= names


@pytest.mark.slow
def test_a_run_resumes_its_pickled_objects_in_a_fresh_process(tmp_path: Path) -> None:
    common = f"""
        import collections, sys, torch
        sys.path.insert(0, {str(REPO / "tests")!r})
        from alphatriangle.config import PersistenceConfig, TrainConfig
        from alphatriangle.data import DataManager
        persist = PersistenceConfig(ROOT_DATA_DIR={str(tmp_path)!r}, MLFLOW_SYNC=False)
        train = TrainConfig(RUN_NAME="safe", DEVICE="cpu", CHECKPOINT_SAVE_FREQ_STEPS=5)
        net = torch.nn.Linear(2, 2)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    """
    save = (
        common
        + """
        user = {"config": train, "history": collections.deque([1, 2], maxlen=4)}
        with DataManager(persist, train) as dm:
            dm.save_training_state(net, optimizer, None, None, 5, 1, 2, user_data=user)
    """
    )
    load = (
        common
        + """
        with DataManager(persist, train) as dm:
            loaded = dm.load_initial_state()
        user = loaded.checkpoint_data.user_data
        assert user["config"] == train, user
        assert list(user["history"]) == [1, 2] and user["history"].maxlen == 4
        print("resumed", flush=True)
    """
    )
    for script in (save, load):
        result = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(script)],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO,
        )
        assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed" in result.stdout
