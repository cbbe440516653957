"""The stats collector, plain and as a real Ray actor: state round trips, and a slow or dead
actor never hangs whoever saves."""

from __future__ import annotations

import logging
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import assert_tree_equal

from alphatriangle.stats import StatsCollector, StatsCollectorActor, fetch_actor_state


def test_history_is_bounded_and_non_finite_values_are_dropped() -> None:
    collector = StatsCollector(max_history=3)
    for step in range(5):
        collector.log("loss", 1.0 / (step + 1), step)
    collector.log("loss", float("nan"), 5)
    collector.log_batch({"lr": 0.1, "loss": 0.01}, step=6)
    collector.log_batch([("games", 2.0, 7)])
    data = collector.get_metric_data()
    assert [s for s, _ in data["loss"]] == [3, 4, 6]
    assert list(data["lr"]) == [(6, 0.1)] and list(data["games"]) == [(7, 2.0)]
    assert collector.dropped == {"loss": 1}


def test_state_round_trips_and_metrics_travel_as_arrays() -> None:
    collector = StatsCollector(max_history=10)
    for step in range(12):
        collector.log("loss", step * 0.5, step)
    state = collector.get_state()
    assert state["metrics"]["loss"]["steps"].dtype == np.int64
    other = StatsCollector()
    other.set_state(state)
    assert other.get_metric_data() == collector.get_metric_data()
    assert_tree_equal(other.get_state(), state)


def test_a_state_without_history_is_kept_aside() -> None:
    collector = StatsCollector()
    collector.set_state({"last_processed_step": 2500, "last_processed_time": 1234.5})
    assert collector.get_metric_data() == {}
    assert collector.get_state()["extra"] == {
        "last_processed_step": 2500,
        "last_processed_time": 1234.5,
    }


_REAL = Path(__file__).parents[1] / "fixtures" / "alphatriangle-1.0.0-real"


def test_a_real_1_0_0_state_restores_with_its_history(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="alphatriangle.stats.collector")
    with (_REAL / "stats_collector_state.pkl").open("rb") as file:
        state = pickle.load(file)  # written by 1.0.0's own StatsCollectorActor.get_state
    collector = StatsCollector()
    collector.set_state(state)
    data = collector.get_metric_data()
    assert collector.max_history == 5
    assert set(data) == {
        "Loss/Total",
        "Loss/Policy",
        "LearningRate",
        "Buffer/Size",
        "RL/Current_Score",
    }
    assert list(data["Loss/Total"]) == [(s, 2.0 / s) for s in range(3, 8)]
    assert list(data["Buffer/Size"]) == [(s, 8.0 * s) for s in range(3, 8)]
    assert list(data["RL/Current_Score"]) == [(6, 0.0), (6, 0.5), (6, 1.0)]
    assert collector.dropped == {}
    assert "not kept: buffer_size, game_step_index" in caplog.text
    # What it restored saves in today's form and round-trips.
    again = StatsCollector()
    again.set_state(collector.get_state())
    assert again.get_metric_data() == data
    collector.log("Loss/Total", 0.25, 8)  # the history goes on, bounded as 1.0.0 bounded it
    assert [s for s, _ in collector.get_metric_data()["Loss/Total"]] == [4, 5, 6, 7, 8]


def test_a_1_0_0_entry_without_a_global_step_is_counted_not_kept() -> None:
    collector = StatsCollector()
    collector.set_state(
        {
            "max_history": None,
            "_metrics_data_list": {
                "x": [({"global_step": 1}, 1.0), ({"game_step_index": 3}, 2.0)],
                "y": [({"global_step": 2}, float("inf"))],
            },
        }
    )
    assert list(collector.get_metric_data()["x"]) == [(1, 1.0)]
    assert collector.dropped == {"x": 1, "y": 1}
    assert collector.max_history == 1000


def test_actor_state_round_trip(ray_local: Any) -> None:
    actor = StatsCollectorActor.remote(max_history=5)  # type: ignore[attr-defined]
    ray_local.get([actor.log.remote("loss", v, s) for s, v in enumerate([3.0, 2.0, 1.0])])
    state = fetch_actor_state(actor, timeout_s=30)
    assert state is not None
    restored = StatsCollectorActor.remote()  # type: ignore[attr-defined]
    ray_local.get(restored.set_state.remote(state))
    assert ray_local.get(restored.get_metric_data.remote()) == ray_local.get(
        actor.get_metric_data.remote()
    )
    assert fetch_actor_state(None, timeout_s=1) is None


def test_a_dead_actor_costs_a_warning_not_a_hang(
    ray_local: Any, caplog: pytest.LogCaptureFixture
) -> None:
    actor = StatsCollectorActor.remote()  # type: ignore[attr-defined]
    ray_local.get(actor.log.remote("loss", 1.0, 0))
    ray_local.kill(actor)  # asynchronous: wait until the actor is really gone
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            ray_local.get(actor.get_metric_data.remote(), timeout=5)
        except ray_local.exceptions.RayActorError:
            break
        time.sleep(0.1)
    began = time.monotonic()
    assert fetch_actor_state(actor, timeout_s=10) is None
    assert time.monotonic() - began < 10
    assert "the stats actor is dead" in caplog.text


def test_a_slow_actor_is_given_up_after_the_timeout(
    ray_local: Any, caplog: pytest.LogCaptureFixture
) -> None:
    class _SlowCollector(StatsCollector):  # local: Ray ships it by value to the worker
        def get_state(self) -> dict[str, Any]:
            time.sleep(5)
            return super().get_state()

    actor = ray_local.remote(num_cpus=0)(_SlowCollector).remote()
    began = time.monotonic()
    assert fetch_actor_state(actor, timeout_s=0.5) is None
    assert time.monotonic() - began < 4
    assert "did not answer within 0.5 s" in caplog.text
    ray_local.kill(actor)
