"""The live parts as users hand them: modules, 1.0.0's NeuralNetwork, plain stats and the
stats actor through a real local Ray, refused with the parameter named when they do not
fit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from dm_support import Parts, make_persist, make_train
from helpers import assert_tree_equal

from alphatriangle.config import EnvConfig, ModelConfig
from alphatriangle.data import DataManager
from alphatriangle.nn import NeuralNetwork


def test_save_training_state_takes_modules_plain_stats_and_networks(tmp_path: Path) -> None:
    from alphatriangle.stats import StatsCollector

    train = make_train(CHECKPOINT_SAVE_FREQ_STEPS=5)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    stats = StatsCollector()
    for step in range(5):
        stats.log("loss", 1.0 / (step + 1), step)
    persist = make_persist(tmp_path, SAVE_BUFFER=False)
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
    with DataManager(make_persist(tmp_path / "network", SAVE_BUFFER=False), train) as dm:
        handle = dm.save_training_state(network, adam, None, None, 5, 0, 0)
        assert handle is not None
        handle.result(timeout=60)
        data = dm.load_initial_state().checkpoint_data
    assert data is not None
    assert data.model_config_dict["CONV_FILTERS"] == ModelConfig().CONV_FILTERS
    assert data.env_config_dict and set(data.model_state_dict) == set(network.model.state_dict())


def test_the_stats_actor_round_trips_through_a_real_local_ray(
    tmp_path: Path, ray_local: Any
) -> None:
    from alphatriangle.stats import StatsCollectorActor

    train = make_train()
    parts = Parts(train)
    actor = StatsCollectorActor.remote()  # type: ignore[attr-defined]
    ray_local.get([actor.log.remote("loss", 1.0 / (s + 1), s) for s in range(5)])
    with DataManager(make_persist(tmp_path), train) as dm:
        dm.save_training_state(
            parts.nn, parts.optimizer, actor, parts.buffer, 5, 1, 1, is_final=True
        )
    restored = StatsCollectorActor.remote()  # type: ignore[attr-defined]
    with DataManager(make_persist(tmp_path), train) as dm:
        DataManager.apply_loaded_state(
            dm.load_initial_state(), parts.nn, parts.optimizer, stats_collector_actor=restored
        )
    assert ray_local.get(restored.get_metric_data.remote()) == ray_local.get(
        actor.get_metric_data.remote()
    )
    ray_local.kill(actor)
