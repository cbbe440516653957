"""The DataManager with the real parts: save and resume through the engine, each resume
rule, 1.0.0 runs, corruption, and a bit-exact resume of a training loop."""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import assert_tree_equal

from alphatriangle.config import EnvConfig, ModelConfig, PersistenceConfig, TrainConfig
from alphatriangle.data import CheckpointCorruptError, DataManager, LoadedTrainingState
from alphatriangle.nn import NeuralNetwork
from alphatriangle.rl.core import ExperienceBuffer
from alphatriangle.utils.types import ColumnarBatch

LEGACY_RUN = (
    Path(__file__).resolve().parents[1]
    / "fixtures/legacy-alphatriangle-1.0.0/runs/train_20250410_093000"
)


def _persist(root: Path, **fields: Any) -> PersistenceConfig:
    return PersistenceConfig(ROOT_DATA_DIR=str(root), MLFLOW_SYNC=False, **fields)


def _train(run: str = "train_20260101_000000", **fields: Any) -> TrainConfig:
    defaults: dict[str, Any] = {
        "BUFFER_CAPACITY": 64,
        "MIN_BUFFER_SIZE_TO_TRAIN": 8,
        "BATCH_SIZE": 8,
        "CHECKPOINT_SAVE_FREQ_STEPS": 5,
        "DEVICE": "cpu",
    }
    return TrainConfig(RUN_NAME=run, **{**defaults, **fields})


class _Net(torch.nn.Module):
    """A small policy/value network: what a user of the DataManager may pass as ``nn``."""

    def __init__(self, grid_shape: tuple[int, ...], other_dim: int, action_dim: int) -> None:
        super().__init__()
        self.body = torch.nn.Linear(math.prod(grid_shape) + other_dim, 32)
        self.policy = torch.nn.Linear(32, action_dim)
        self.value = torch.nn.Linear(32, 1)

    def forward(self, grid: torch.Tensor, other: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = torch.relu(self.body(torch.cat([grid.flatten(1), other], 1)))
        return self.policy(hidden), self.value(hidden).squeeze(1)


class _Parts:
    """A network, its optimizer and a replay buffer, seeded."""

    def __init__(self, train: TrainConfig, seed: int = 0, channels: int = 1) -> None:
        torch.manual_seed(seed)
        model = ModelConfig(GRID_INPUT_CHANNELS=channels)
        self.buffer = ExperienceBuffer(train, EnvConfig(), model, seed=seed)
        self.nn = _Net(self.buffer.grid_shape, self.buffer.other_dim, self.buffer.action_dim)
        self.optimizer = torch.optim.Adam(self.nn.parameters(), lr=1e-3)

    def fill(self, count: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        buffer = self.buffer
        policy = rng.random((count, buffer.action_dim), dtype=np.float32)
        buffer.add_batch(
            ColumnarBatch(
                grid=rng.random((count, *buffer.grid_shape), dtype=np.float32),
                other_features=rng.random((count, buffer.other_dim), dtype=np.float32),
                policy_target=policy / policy.sum(axis=1, keepdims=True),
                value_target=rng.standard_normal(count),
            )
        )

    def train_step(self, step: int) -> float:
        sample = self.buffer.sample(8, current_train_step=step)
        assert sample is not None
        batch = sample["batch"]
        logits, value = self.nn(
            torch.from_numpy(batch["grid"]), torch.from_numpy(batch["other_features"])
        )
        target = torch.from_numpy(batch["policy_target"])
        loss = (
            -(target * torch.log_softmax(logits, 1)).sum(1).mean()
            + ((value - torch.from_numpy(batch["value_target"]).float()) ** 2).mean()
        )
        self.optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        errors = (value.detach() - torch.from_numpy(batch["value_target"]).float()).numpy()
        self.buffer.update_priorities(sample["indices"], errors)
        self.fill(2, seed=1000 + step)  # self-play goes on: new experiences each step
        return float(loss.detach())


def _save(dm: DataManager, parts: _Parts, step: int, **kwargs: Any) -> Any:
    return dm.save_training_state(
        parts.nn, parts.optimizer, None, parts.buffer, step, step * 2, step * 10, **kwargs
    )


def test_save_returns_once_staged_and_resume_restores_everything(tmp_path: Path) -> None:
    train = _train()
    parts = _Parts(train)
    parts.fill(40, seed=1)
    parts.train_step(0)
    with DataManager(_persist(tmp_path), train) as dm:
        assert dm.load_initial_state() == LoadedTrainingState()  # fresh
        handle = _save(dm, parts, 10, is_final=True, user_data={"note": "x"})
        assert handle is not None and handle.staged.done()  # returned once staged
        step_dir = handle.result(timeout=60)
        assert step_dir.name == "step_000000010"
        assert _save(dm, parts, 11) is None  # not due
    again = _Parts(train, seed=5)
    with DataManager(_persist(tmp_path), train) as dm:
        loaded = dm.load_initial_state()
        counters = DataManager.apply_loaded_state(
            loaded, again.nn, again.optimizer, buffer=again.buffer
        )
    assert counters == (10, 20, 100)
    assert loaded.checkpoint_data is not None and loaded.checkpoint_data.user_data == {"note": "x"}
    assert_tree_equal(again.nn.state_dict(), parts.nn.state_dict())
    assert_tree_equal(again.optimizer.state_dict(), parts.optimizer.state_dict())
    assert_tree_equal(
        {k: v for k, v in again.buffer.state_dict().items() if k != "rng"},
        {k: v for k, v in parts.buffer.state_dict().items() if k != "rng"},
    )


def test_checkpoint_and_buffer_frequencies_and_retention(tmp_path: Path) -> None:
    train = _train(CHECKPOINT_SAVE_FREQ_STEPS=5)
    persist = _persist(tmp_path, BUFFER_SAVE_FREQ_STEPS=20, KEEP_LATEST_CHECKPOINTS=2)
    parts = _Parts(train)
    parts.fill(20, seed=2)
    with DataManager(persist, train) as dm:
        for step in range(1, 31):
            _save(dm, parts, step, is_best=step == 10)
        dm.wait_until_finished()
        steps = dm.manager.all_steps()
        # 25, 30: the newest; 10: the best; 20: the newest holding the buffer.
        assert steps == [10, 20, 25, 30]
        assert dm.get_buffer_path().name == "step_000000020"
        assert dm.get_checkpoint_path(is_best=True).name == "step_000000010"
        assert dm.get_checkpoint_path().name == "step_000000030"


def test_resume_rules_explicit_path_and_previous_run(tmp_path: Path, caplog: Any) -> None:
    caplog.set_level(logging.INFO)
    first = _train("train_20260101_000000")
    parts = _Parts(first)
    parts.fill(20, seed=3)
    with DataManager(_persist(tmp_path), first) as dm:
        _save(dm, parts, 5, is_final=True)
    # A later run resumes from the newest previous run, by its timestamp.
    later = _train("train_20260102_000000")
    with DataManager(_persist(tmp_path), later) as dm:
        loaded = dm.load_initial_state()
        assert loaded.checkpoint_data is not None and loaded.checkpoint_data.global_step == 5
        assert loaded.buffer_data is not None and loaded.buffer_data.buffer_state is not None
    assert "resuming from run train_20260101_000000, step 5" in caplog.text
    # An explicit step directory wins over everything.
    step_dir = tmp_path / "runs" / "train_20260101_000000" / "checkpoints" / "step_000000005"
    explicit = _train("train_20260103_000000", LOAD_CHECKPOINT_PATH=str(step_dir))
    with DataManager(_persist(tmp_path), explicit) as dm:
        loaded = dm.load_initial_state()
        assert loaded.checkpoint_data is not None and loaded.checkpoint_data.global_step == 5
    no_auto = _train("train_20260104_000000", AUTO_RESUME_LATEST=False)
    with DataManager(_persist(tmp_path), no_auto) as dm:
        assert dm.load_initial_state() == LoadedTrainingState()
    assert "starting fresh" in caplog.text


def test_a_1_0_0_run_resumes_and_continues_in_the_new_format(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    shutil.copytree(LEGACY_RUN, runs / LEGACY_RUN.name)
    train = _train("train_20260101_000000")
    persist = _persist(tmp_path)
    with DataManager(persist, train) as dm:
        loaded = dm.load_initial_state()
        assert loaded.checkpoint_data is not None
        assert loaded.checkpoint_data.global_step == 2500
        assert loaded.buffer_data is not None and len(loaded.buffer_data.buffer_list) == 200
        parts = _Parts(train, channels=2)  # the imitation's grids have 2 channels
        DataManager.apply_loaded_state(
            LoadedTrainingState(buffer_data=loaded.buffer_data),
            parts.nn,
            parts.optimizer,
            buffer=parts.buffer,
        )
        assert len(parts.buffer) == 64  # the newest 200 experiences, in a buffer of 64
        handle = _save(dm, parts, 2501, is_final=True)
        assert handle is not None and handle.result(60).name == "step_000002501"
    explicit = _train(
        "train_20260102_000000",
        LOAD_CHECKPOINT_PATH=str(runs / LEGACY_RUN.name / "checkpoints" / "latest.pkl"),
    )
    with DataManager(persist, explicit) as dm:
        assert dm.load_initial_state().checkpoint_data.global_step == 2500  # type: ignore[union-attr]


def test_corrupt_steps_fall_back_loudly_and_all_corrupt_raises(tmp_path: Path, caplog: Any) -> None:
    train = _train()
    parts = _Parts(train)
    parts.fill(20, seed=4)
    with DataManager(_persist(tmp_path, KEEP_LATEST_CHECKPOINTS=5), train) as dm:
        for step in (5, 10):
            _save(dm, parts, step, is_final=True)
    checkpoints = tmp_path / "runs" / train.RUN_NAME / "checkpoints"
    newest = checkpoints / "step_000000010" / "checkpoint.data"
    newest.write_bytes(newest.read_bytes()[:-10])  # truncated
    with DataManager(_persist(tmp_path), train) as dm:
        loaded = dm.load_initial_state()
        assert loaded.checkpoint_data is not None and loaded.checkpoint_data.global_step == 5
    assert "skipping corrupt step 10" in caplog.text
    older = checkpoints / "step_000000005" / "checkpoint.data"
    raw = bytearray(older.read_bytes())
    raw[100] ^= 0xFF
    older.write_bytes(bytes(raw))
    with DataManager(_persist(tmp_path), train) as dm, pytest.raises(CheckpointCorruptError):
        dm.load_initial_state()  # never a silent fresh start


def test_resume_is_bit_exact(tmp_path: Path) -> None:
    """N steps, save, resume in new objects, N steps == 2N steps unbroken."""
    train = _train()

    def run(parts: _Parts, steps: range) -> list[float]:
        return [parts.train_step(step) for step in steps]

    torch.manual_seed(123)
    unbroken = _Parts(train)
    unbroken.fill(40, seed=9)
    np.random.seed(7)
    expected = run(unbroken, range(10))

    torch.manual_seed(123)
    first = _Parts(train)
    first.fill(40, seed=9)
    np.random.seed(7)
    losses = run(first, range(5))
    with DataManager(_persist(tmp_path), train) as dm:
        _save(dm, first, 5, is_final=True)
    torch.manual_seed(999)  # whatever the new process does first is undone by the resume
    second = _Parts(train, seed=77)
    with DataManager(_persist(tmp_path), train) as dm:
        DataManager.apply_loaded_state(
            dm.load_initial_state(), second.nn, second.optimizer, buffer=second.buffer
        )
    losses += run(second, range(5, 10))
    assert losses == expected
    assert_tree_equal(second.nn.state_dict(), unbroken.nn.state_dict())


def test_run_config_is_written_atomically(tmp_path: Path) -> None:
    with DataManager(_persist(tmp_path), _train()) as dm:
        path = dm.save_run_config({"seed": 7, "model": ModelConfig().model_dump()})
    assert path.name == "configs.json" and '"seed": 7' in path.read_text()
    assert not list(path.parent.glob(".*.tmp"))


def test_the_stats_actor_round_trips_through_a_real_local_ray(
    tmp_path: Path, ray_local: Any
) -> None:
    from alphatriangle.stats import StatsCollectorActor

    train = _train()
    parts = _Parts(train)
    actor = StatsCollectorActor.remote()  # type: ignore[attr-defined]
    ray_local.get([actor.log.remote("loss", 1.0 / (s + 1), s) for s in range(5)])
    with DataManager(_persist(tmp_path), train) as dm:
        dm.save_training_state(
            parts.nn, parts.optimizer, actor, parts.buffer, 5, 1, 1, is_final=True
        )
    restored = StatsCollectorActor.remote()  # type: ignore[attr-defined]
    with DataManager(_persist(tmp_path), train) as dm:
        DataManager.apply_loaded_state(
            dm.load_initial_state(), parts.nn, parts.optimizer, stats_collector_actor=restored
        )
    assert ray_local.get(restored.get_metric_data.remote()) == ray_local.get(
        actor.get_metric_data.remote()
    )
    ray_local.kill(actor)


@pytest.mark.slow
def test_a_new_machine_resumes_from_the_mlflow_run(tmp_path: Path) -> None:
    train = _train()
    parts = _Parts(train)
    parts.fill(20, seed=6)
    first = PersistenceConfig(ROOT_DATA_DIR=str(tmp_path / "first"))
    with DataManager(first, train) as dm:
        _save(dm, parts, 5, is_final=True)
        assert dm.manager.wait_for_uploads(timeout=60)
    # Another machine: its own data root, the same MLflow store and run name.
    elsewhere = PersistenceConfig(
        ROOT_DATA_DIR=str(tmp_path / "elsewhere"),
        MLFLOW_TRACKING_URI_OVERRIDE=first.MLFLOW_TRACKING_URI,
    )
    with DataManager(elsewhere, train) as dm:
        loaded = dm.load_initial_state()
    assert loaded.checkpoint_data is not None and loaded.checkpoint_data.global_step == 5
    assert_tree_equal(loaded.checkpoint_data.model_state_dict, dict(parts.nn.state_dict()))
    assert loaded.buffer_data is not None and loaded.buffer_data.buffer_state is not None


def test_checkpoints_are_due_by_steps_or_by_wall_time(tmp_path: Path) -> None:
    now = [1000.0]
    train = _train(CHECKPOINT_SAVE_FREQ_STEPS=1000, CHECKPOINT_SAVE_FREQ_SECONDS=60.0)
    parts = _Parts(train)
    persist = _persist(tmp_path, SAVE_BUFFER=False, KEEP_LATEST_CHECKPOINTS=10)
    with DataManager(persist, train, clock=lambda: now[0]) as dm:
        for step, at in ((1, 1010.0), (2, 1061.0), (3, 1070.0), (4, 1125.0), (1000, 1130.0)):
            now[0] = at
            _save(dm, parts, step)
        assert _save(dm, parts, 1000, is_final=True) is None  # saved already: nothing more
        dm.wait_until_finished()
        assert dm.manager.all_steps() == [2, 4, 1000]


def test_a_final_save_completes_a_step_just_saved_without_the_buffer(tmp_path: Path) -> None:
    train = _train(CHECKPOINT_SAVE_FREQ_STEPS=5)
    persist = _persist(tmp_path, BUFFER_SAVE_FREQ_STEPS=1000)
    parts = _Parts(train)
    parts.fill(20, seed=3)
    with DataManager(persist, train) as dm:
        assert _save(dm, parts, 5) is not None  # the checkpoint is due, the buffer is not
        parts.fill(3, seed=4)  # what the final save must keep
        handle = _save(dm, parts, 5, is_final=True)  # SIGTERM right after that save
        assert handle is not None
        handle.result(timeout=60)
        assert set(dm.manager.metadata(5)["items"]) == {"checkpoint", "buffer"}
        assert _save(dm, parts, 5, is_final=True) is None  # whole now: nothing more
    with DataManager(persist, train) as dm:
        loaded = dm.load_initial_state()
    assert loaded.buffer_data is not None and loaded.buffer_data.buffer_state is not None
    assert len(loaded.buffer_data.buffer_state["columns"]["grid"]) == 23


# -- the best checkpoint --------------------------------------------------------------------


def test_the_best_checkpoint_survives_retention(tmp_path: Path, caplog: Any) -> None:
    train = _train(CHECKPOINT_SAVE_FREQ_STEPS=5)
    persist = _persist(
        tmp_path,
        SAVE_BUFFER=False,
        KEEP_LATEST_CHECKPOINTS=2,
        KEEP_BEST_CHECKPOINTS=1,
        BEST_METRIC="loss",
        BEST_MODE="min",
    )
    parts = _Parts(train)
    with DataManager(persist, train) as dm:
        for step, loss in zip((5, 10, 15, 20, 25), (0.01, 0.5, 0.6, 0.7, 0.8), strict=True):
            _save(dm, parts, step, metrics={"loss": loss})
        dm.wait_until_finished()
        assert dm.manager.all_steps() == [5, 20, 25]  # the best, and the 2 newest
        assert dm.best_step() == 5
        assert dm.get_checkpoint_path(is_best=True).name == "step_000000005"
        # 1.0.0's flag: a step saved with is_best=True is the best, and kept.
        _save(dm, parts, 30, is_best=True, metrics={"loss": 0.9})
        for step in (35, 40):
            _save(dm, parts, step, metrics={"loss": 0.95})
        dm.wait_until_finished()
        assert dm.manager.all_steps() == [5, 30, 35, 40]
        assert dm.best_step() == 30
        assert dm.get_checkpoint_path(is_best=True).name == "step_000000030"
    assert "without the metric" not in caplog.text
    # Another run's best, read from its directory.
    with DataManager(persist, _train("train_20260102_000000")) as other:
        assert other.best_step(train.RUN_NAME) == 30
        path = other.get_checkpoint_path(run_name=train.RUN_NAME, is_best=True)
        assert path == dm.checkpoint_dir / "step_000000030"


def test_a_best_metric_no_save_logs_warns_once(tmp_path: Path, caplog: Any) -> None:
    train = _train(CHECKPOINT_SAVE_FREQ_STEPS=5)
    persist = _persist(tmp_path, SAVE_BUFFER=False, BEST_METRIC="val_loss")
    parts = _Parts(train)
    with DataManager(persist, train) as dm:
        for step in (5, 10, 15):
            _save(dm, parts, step, metrics={"loss": 0.5})
        dm.wait_until_finished()
        assert dm.best_step() is None
        assert dm.get_checkpoint_path(is_best=True) == dm.checkpoint_dir  # no best: no step
    warnings = [r for r in caplog.records if "without the metric 'val_loss'" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "step 5" in warnings[0].getMessage()


def test_a_buffer_only_step_is_never_the_best_checkpoint(tmp_path: Path) -> None:
    train = _train(CHECKPOINT_SAVE_FREQ_STEPS=10)
    persist = _persist(tmp_path, BUFFER_SAVE_FREQ_STEPS=5, KEEP_LATEST_CHECKPOINTS=1)
    parts = _Parts(train)
    parts.fill(10, seed=1)
    with DataManager(persist, train) as dm:
        _save(dm, parts, 10, metrics={"loss": 0.5})  # checkpoint and buffer
        _save(dm, parts, 15, metrics={"loss": 0.1})  # the buffer alone: not ranked
        dm.wait_until_finished()
        assert "loss" not in dm.manager.metadata(15)["metrics"]
        _save(dm, parts, 20, metrics={"loss": 0.9})
        dm.wait_until_finished()
        assert dm.best_step() == 10 and dm.manager.all_steps() == [10, 20]


# -- 1.0.0's interface ----------------------------------------------------------------------


def test_paths_and_previous_runs_as_1_0_0_named_them(tmp_path: Path) -> None:
    first = _train("train_20260101_000000", CHECKPOINT_SAVE_FREQ_STEPS=5)
    persist = _persist(tmp_path, BUFFER_SAVE_FREQ_STEPS=10, KEEP_LATEST_CHECKPOINTS=5)
    parts = _Parts(first)
    parts.fill(10, seed=2)
    with DataManager(persist, first) as dm:
        for step in (5, 10, 15):
            _save(dm, parts, step)
        dm.wait_until_finished()
        directory = dm.checkpoint_dir
        assert dm.get_checkpoint_path() == directory / "step_000000015"
        assert dm.get_checkpoint_path(step=10) == directory / "step_000000010"
        # A step that does not exist: the would-be path, as 1.0.0 returned its file's.
        assert dm.get_checkpoint_path(step=999) == directory / "step_000000999"
        assert not dm.get_checkpoint_path(step=999).exists()
        assert dm.get_buffer_path(step=999) == directory / "step_000000999"
        # is_latest wins over step (1.0.0 returned latest.pkl); is_final names the step
        # with one, the newest without.
        assert dm.get_checkpoint_path(step=5, is_latest=True) == directory / "step_000000015"
        assert dm.get_checkpoint_path(step=5, is_final=True) == directory / "step_000000005"
        assert dm.get_checkpoint_path(is_final=True) == directory / "step_000000015"
        assert dm.get_buffer_path() == directory / "step_000000010"
        assert dm.get_buffer_path(step=5, is_final=True) == directory / "step_000000005"
    later = _train("train_20260102_000000")
    with DataManager(persist, later) as dm:
        found = dm.find_latest_run_dir(later.RUN_NAME)
        assert found == "train_20260101_000000" and isinstance(found, str)
        assert dm.find_latest_run_dir("train_20260101_000000") is None  # no other with steps
        assert dm.get_checkpoint_path(run_name=found) == directory / "step_000000015"
        assert dm.get_checkpoint_path() == dm.checkpoint_dir  # nothing saved in this run


def test_buffer_list_gives_the_experiences_lazily(tmp_path: Path) -> None:
    from alphatriangle.data.schemas import LazyExperienceList

    train = _train()
    parts = _Parts(train)
    parts.fill(70, seed=5)  # more than the capacity of 64: the ring has wrapped
    with DataManager(_persist(tmp_path), train) as dm:
        _save(dm, parts, 5, is_final=True)
    with DataManager(_persist(tmp_path), train) as dm:
        loaded = dm.load_initial_state()
    assert loaded.buffer_data is not None
    experiences = loaded.buffer_data.buffer_list
    assert isinstance(experiences, LazyExperienceList)
    again = _Parts(train, seed=3)
    DataManager.apply_loaded_state(loaded, again.nn, again.optimizer, buffer=again.buffer)
    assert list.__len__(experiences) == 0  # apply_loaded_state read the columns alone
    expected = parts.buffer.to_experiences()
    assert len(experiences) == 64 and len(expected) == 64
    for (state, policy, value), (want_state, want_policy, want_value) in zip(
        experiences, expected, strict=True
    ):
        assert value == want_value and policy == want_policy
        assert np.array_equal(state["grid"], want_state["grid"])
        assert np.array_equal(state["other_features"], want_state["other_features"])
    assert experiences[0] is experiences[0]  # converted once, then kept
    joined = [] + experiences  # noqa: RUF005 - list.__add__ with the lazy list on the right
    assert len(joined) == 64 and joined[-1] is experiences[-1]
    restored = ExperienceBuffer(train, EnvConfig(), ModelConfig(), seed=0)
    restored.add_batch(experiences)  # 1.0.0 code's way of refilling its buffer
    assert [v for _, _, v in restored.to_experiences()] == [v for _, _, v in expected]


def test_save_run_config_writes_json_or_refuses(tmp_path: Path) -> None:
    import json

    with DataManager(_persist(tmp_path), _train()) as dm:
        path = dm.save_run_config(
            {"model": ModelConfig(), "root": tmp_path / "data", "seed": 7, "tags": ("a", "b")}
        )
        written = json.loads(path.read_text())
        assert written["model"] == ModelConfig().model_dump(mode="json")
        assert written["root"] == str(tmp_path / "data") and written["tags"] == ["a", "b"]
        before = path.read_bytes()
        for bad, key in (
            ({"model": {"weights": torch.ones(2)}}, "model.weights"),
            ({"buffer": [1, np.zeros(3)]}, "buffer[1]"),
            ({"hook": object()}, "hook"),
        ):
            with pytest.raises(TypeError, match=key.replace("[", r"\[").replace("]", r"\]")):
                dm.save_run_config(bad)
        with pytest.raises(ValueError, match="loss"):
            dm.save_run_config({"loss": float("nan")})
        assert path.read_bytes() == before  # nothing written by a refused call


def test_save_training_state_takes_modules_plain_stats_and_networks(tmp_path: Path) -> None:
    from alphatriangle.stats import StatsCollector

    train = _train(CHECKPOINT_SAVE_FREQ_STEPS=5)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    stats = StatsCollector()
    for step in range(5):
        stats.log("loss", 1.0 / (step + 1), step)
    persist = _persist(tmp_path, SAVE_BUFFER=False)
    with DataManager(persist, train) as dm:
        with pytest.raises(TypeError, match="nn is a str"):  # step 7: nothing is due
            dm.save_training_state("a string", optimizer, None, None, 7, 0, 0)
        with pytest.raises(TypeError, match="stats_collector_actor is a object"):
            dm.save_training_state(model, optimizer, object(), None, 7, 0, 0)
        with pytest.raises(TypeError, match="buffer"):
            dm.save_training_state(model, optimizer, None, [1, 2], 7, 0, 0)
        handle = dm.save_training_state(model, optimizer, stats, None, 5, 1, 2)
        assert handle is not None
        handle.result(timeout=60)
    with DataManager(persist, train) as dm:
        loaded = dm.load_initial_state()
    assert loaded.checkpoint_data is not None
    assert loaded.checkpoint_data.model_config_dict == {}
    again, again_stats = torch.nn.Linear(4, 3), StatsCollector()
    counters = DataManager.apply_loaded_state(
        loaded,
        again,
        torch.optim.SGD(again.parameters(), lr=0.1),
        stats_collector_actor=again_stats,
    )
    assert counters == (5, 1, 2)
    assert_tree_equal(again.state_dict(), model.state_dict())
    assert again_stats.get_metric_data() == stats.get_metric_data()
    # 1.0.0's NeuralNetwork: its .model's weights and its configs.
    network = NeuralNetwork(ModelConfig(), EnvConfig(), train, torch.device("cpu"))
    adam = torch.optim.Adam(network.model.parameters())
    with DataManager(_persist(tmp_path / "network", SAVE_BUFFER=False), train) as dm:
        handle = dm.save_training_state(network, adam, None, None, 5, 0, 0)
        assert handle is not None
        handle.result(timeout=60)
        data = dm.load_initial_state().checkpoint_data
    assert data is not None
    assert data.model_config_dict["CONV_FILTERS"] == ModelConfig().CONV_FILTERS
    assert data.env_config_dict and set(data.model_state_dict) == set(network.model.state_dict())


def test_help_of_load_initial_state_states_the_resume_rules() -> None:
    import pydoc

    text = pydoc.render_doc(DataManager.load_initial_state, renderer=pydoc.plaintext)
    for rule in (
        "LOAD_CHECKPOINT_PATH",
        "newest committed step",
        "MLflow",
        "AUTO_RESUME_LATEST",
        "fresh start",
        "never a silent fresh start",
    ):
        assert rule in text, rule
