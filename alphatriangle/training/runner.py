"""``run_training``: the reference AlphaZero-style run, checkpointing while it trains.

Start: 1) open the run's ``DataManager`` (its writer lock: one trainer per run) 2) start
Ray (local unless an address is given) and the stats actor 3) load what to resume from, by
the DataManager's rules, build the network, the optimizer and the game from the
checkpoint's own configs (:mod:`alphatriangle.training.resume`: a run of ours or of
alphatriangle 1.0.0), and say so ("resuming run X from step N") 4) start the self-play
workers with the current weights.

Each turn of the loop: 1) take the games the workers finished into the replay buffer
2) train one step on a prioritised batch, once the buffer holds ``MIN_BUFFER_SIZE_TO_TRAIN``
3) ship new weights through the object store every ``WORKER_UPDATE_FREQ_STEPS`` steps
4) report stats to the stats actor and MLflow 5) hand the state to
``DataManager.save_training_state``, which stages what is due and returns (the write goes
on in the background).

Stop: at ``MAX_TRAINING_STEPS``, or on SIGTERM or the first Ctrl-C, after a final save of
the checkpoint and the buffer that is waited for. A second Ctrl-C raises
``KeyboardInterrupt`` at once (the command exits without waiting; committed steps stay).
A checkpoint that exists but cannot be read stops the run with the error: never a silent
fresh start.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch

from alphatriangle.config import RunConfigs
from alphatriangle.data import DataManager, LoadedTrainingState, SaveHandle
from alphatriangle.env import check_grid_channels, feature_dim
from alphatriangle.nn import NeuralNetwork
from alphatriangle.rl.core import ExperienceBuffer
from alphatriangle.training.learner import Learner
from alphatriangle.training.progress import Progress, ProgressInfo
from alphatriangle.training.resume import configs_of_checkpoint, position_scheduler
from alphatriangle.training.self_play import GameResult, start_workers

__all__ = ["TrainingSummary", "check_configs", "run_training"]

logger = logging.getLogger(__name__)

_STATS_EVERY = 10  # steps between metrics sent to MLflow


@dataclass
class TrainingSummary:
    """What a run did: steps, games, where its checkpoints and metrics are, how long the
    learner trained (``train_seconds``: first learner step to the last save committed)."""

    run_name: str
    start_step: int
    final_step: int
    episodes_played: int
    total_simulations: int
    buffer_size: int
    checkpoint_dir: Path | None
    tracking_uri: str | None
    resumed_from: str | None = None
    stopped_by: str | None = None
    train_seconds: float = 0.0
    save_stalls_ms: list[float] = field(default_factory=list)


def check_configs(configs: RunConfigs) -> None:
    """ValueError when the network's inputs do not match what the built-in game produces."""
    expected = feature_dim(configs.env)
    if expected != configs.model.OTHER_NN_INPUT_FEATURES_DIM:
        raise ValueError(
            f"ModelConfig.OTHER_NN_INPUT_FEATURES_DIM is "
            f"{configs.model.OTHER_NN_INPUT_FEATURES_DIM}, but the game gives {expected} "
            f"features with NUM_SHAPE_SLOTS={configs.env.NUM_SHAPE_SLOTS}"
        )
    check_grid_channels(configs.model.GRID_INPUT_CHANNELS)
    if configs.train.MAX_TRAINING_STEPS is None:
        raise ValueError("TrainConfig.MAX_TRAINING_STEPS must be set (--steps)")


def _run_config_file(configs: RunConfigs, run_name: str) -> Path | None:
    """The ``configs.json`` of the run a checkpoint came from: beside an explicit load
    path's ``checkpoints/`` directory, else in that run's directory under the data root."""
    persist = configs.persistence
    explicit = configs.train.LOAD_CHECKPOINT_PATH
    if explicit:
        return Path(explicit).absolute().parent.parent / persist.CONFIG_FILENAME
    try:
        return persist.get_run_base_dir(run_name) / persist.CONFIG_FILENAME
    except ValueError:  # a run name that is no path component: no file to read
        return None


@dataclass
class _Parts:
    """What a run trains, built from its configs or, resuming, its checkpoint's."""

    configs: RunConfigs
    loaded: LoadedTrainingState | None
    changed: list[str]
    network: NeuralNetwork
    learner: Learner
    buffer: ExperienceBuffer


def _build_parts(configs: RunConfigs, data: DataManager | None) -> _Parts:
    """Load what to resume from (nothing without ``data``), take the model, the game and
    the optimizer from its checkpoint, and build the network (checked against the
    checkpoint's weights: an error naming the field, not torch's), learner and buffer."""
    loaded = None if data is None else data.load_initial_state()
    checkpoint = None if loaded is None else loaded.checkpoint_data
    changed: list[str] = []
    if checkpoint is not None:
        configs, changed = configs_of_checkpoint(
            configs, checkpoint, _run_config_file(configs, checkpoint.run_name)
        )
    check_configs(configs)
    network = NeuralNetwork(configs.model, configs.env, configs.train)
    if checkpoint is not None:
        network.check_weights(
            checkpoint.model_state_dict,
            f"the checkpoint of run {checkpoint.run_name} at step {checkpoint.global_step}",
        )
    learner = Learner(network, configs.train)
    buffer = ExperienceBuffer(configs.train, configs.env, configs.model)
    return _Parts(configs, loaded, changed, network, learner, buffer)


def _apply(
    parts: _Parts, data: DataManager, stats_actor: Any, echo: Callable[[str], None]
) -> tuple[int, int, int, str | None]:
    """Put the loaded state into the parts and say so; (step, games, simulations, the run
    resumed from)."""
    if parts.loaded is None:
        return 0, 0, 0, None
    learner, train = parts.learner, parts.configs.train
    scheduler = getattr(learner, "scheduler", None)
    step, episodes, simulations = data.apply_loaded_state(
        parts.loaded,
        parts.network,
        learner.optimizer,
        buffer=parts.buffer,
        stats_collector_actor=stats_actor,
        scheduler=scheduler,
    )
    checkpoint = parts.loaded.checkpoint_data
    if checkpoint is None:
        return step, episodes, simulations, None
    if scheduler is not None and checkpoint.scheduler_state_dict is None:
        position_scheduler(scheduler, learner.optimizer, step)
    origin = "" if checkpoint.run_name == train.RUN_NAME else f" (from run {checkpoint.run_name})"
    echo(
        f"resuming run {train.RUN_NAME} from step {step}{origin}: buffer "
        f"{len(parts.buffer)} experiences, {episodes} games played, {simulations} simulations"
    )
    if parts.changed:
        by_config: dict[str, list[str]] = {}
        for name in parts.changed:
            config, field_name = name.split(".", 1)
            by_config.setdefault(config, []).append(field_name)
        listed = "; ".join(f"{c}: {', '.join(names)}" for c, names in by_config.items())
        echo(f"  with the checkpoint's own configs: {listed}")
    return step, episodes, simulations, checkpoint.run_name


class _StopRequest:
    """SIGTERM or a first SIGINT ask the loop to stop after a final save; a second SIGINT
    raises KeyboardInterrupt."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._previous: dict[int, Any] = {}

    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        self.reason = self.reason or "SIGTERM"

    def _on_int(self, signum: int, frame: FrameType | None) -> None:
        if self.reason is not None:
            raise KeyboardInterrupt
        self.reason = "Ctrl-C"
        logger.warning("stopping after a final checkpoint; Ctrl-C again to abort at once")

    @contextmanager
    def installed(self) -> Iterator[_StopRequest]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        handlers: dict[int, Callable[[int, FrameType | None], None]] = {
            signal.SIGTERM: self._on_term,
            signal.SIGINT: self._on_int,
        }
        for signum, handler in handlers.items():
            self._previous[signum] = signal.signal(signum, handler)
        try:
            yield self
        finally:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _start_ray(address: str | None, workers: int) -> bool:
    """Connect to ``address``, or start a local Ray with one CPU per worker; whether this
    call started it (and so shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    else:
        ray.init(
            num_cpus=workers,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    return True


def _metrics_logger(configs: RunConfigs, data: DataManager) -> Any:
    """The MLflow metrics logger of the run (None when MLflow is off), the configs as its
    parameters."""
    if not configs.persistence.MLFLOW_SYNC:
        return None
    from alphatriangle.training.metrics import MlflowMetricsLogger

    params = {
        f"{section}.{name}": value
        for section, fields in configs.as_dict().items()
        for name, value in fields.items()
    }
    return MlflowMetricsLogger(
        configs.persistence.MLFLOW_TRACKING_URI, data.manager.mlflow_run_id, params=params
    )


def run_training(
    configs: RunConfigs,
    *,
    ray_address: str | None = None,
    interactive: bool | None = None,
    checkpointing: bool = True,
    echo: Callable[[str], None] = print,
) -> TrainingSummary:
    """Train to ``configs.train.MAX_TRAINING_STEPS`` (see the module docstring). With
    ``checkpointing=False`` nothing is loaded or saved, all else (MLflow metrics included)
    runs as usual: the benchmarks' baseline."""
    import ray

    from alphatriangle.stats import StatsCollectorActor

    if configs.train.MAX_TRAINING_STEPS is None:
        raise ValueError("TrainConfig.MAX_TRAINING_STEPS must be set (--steps)")
    train, persist = configs.train, configs.persistence
    target = train.MAX_TRAINING_STEPS
    assert target is not None
    _seed_everything(train.RANDOM_SEED)
    data = DataManager(persist, train)
    owns_ray = False
    workers: list[Any] = []
    metrics_logger: Any = None
    try:
        # Read what to resume from first: an unreadable checkpoint fails before Ray starts.
        parts = _build_parts(configs, data if checkpointing else None)
        configs, train = parts.configs, parts.configs.train
        network, learner, buffer = parts.network, parts.learner, parts.buffer
        owns_ray = _start_ray(ray_address, train.NUM_SELF_PLAY_WORKERS)
        if owns_ray and ray_address is None:
            # Local workers take a core each; a learner spinning on every core starves them.
            cores = os.cpu_count() or 1
            torch.set_num_threads(max(1, cores - train.NUM_SELF_PLAY_WORKERS))
        stats_actor = StatsCollectorActor.remote()
        step, episodes, simulations, resumed_from = _apply(parts, data, stats_actor, echo)
        data.save_run_config(configs.as_dict())
        metrics_logger = _metrics_logger(configs, data)
        summary = TrainingSummary(
            run_name=train.RUN_NAME,
            start_step=step,
            final_step=step,
            episodes_played=episodes,
            total_simulations=simulations,
            buffer_size=len(buffer),
            checkpoint_dir=data.checkpoint_dir if checkpointing else None,
            tracking_uri=persist.MLFLOW_TRACKING_URI if persist.MLFLOW_SYNC else None,
            resumed_from=resumed_from,
        )
        if step >= target:
            echo(f"run {train.RUN_NAME} is at step {step} already: --steps {target} is reached")
            return summary
        workers = start_workers(train.NUM_SELF_PLAY_WORKERS, configs, seed=train.RANDOM_SEED + step)
        loop = _Loop(
            configs=configs,
            data=data if checkpointing else None,
            network=network,
            learner=learner,
            buffer=buffer,
            stats_actor=stats_actor,
            metrics_logger=metrics_logger,
            summary=summary,
        )
        with (
            _StopRequest().installed() as stop,
            Progress(target, step, interactive=interactive) as bar,
        ):
            loop.run(workers, stop, bar)
            summary.stopped_by = stop.reason
        return summary
    finally:
        for worker in workers:
            ray.kill(worker)
        if metrics_logger is not None:
            metrics_logger.close()
        data.close()
        if checkpointing and data.manager.options.mlflow is not None:
            uploads = data.manager.upload_status()  # what the close left, and why
            if uploads:
                echo(f"MLflow: {uploads}\n  they upload when the run resumes (ckpt list)")
        if owns_ray:
            ray.shutdown()


class _Loop:
    """The loop's state: counters, the weights shipped, saves not yet committed."""

    def __init__(
        self,
        *,
        configs: RunConfigs,
        data: DataManager | None,
        network: NeuralNetwork,
        learner: Learner,
        buffer: ExperienceBuffer,
        stats_actor: Any,
        metrics_logger: Any,
        summary: TrainingSummary,
    ) -> None:
        self.configs, self.data = configs, data
        self.network, self.learner, self.buffer = network, learner, buffer
        self.stats_actor, self.metrics_logger, self.summary = stats_actor, metrics_logger, summary
        self.step = summary.start_step
        self.loss: float | None = None
        self.pending: list[SaveHandle] = []
        self.committed_step: int | None = None if data is None else data.manager.latest_step()
        self.stall_ms: float | None = None

    def _take_game(self, result: GameResult) -> None:
        summary = self.summary
        if result.moves:
            self.buffer.add_batch(result.experiences)
        summary.episodes_played += 1
        summary.total_simulations += result.simulations
        game_stats = {"game/score": result.score, "game/moves": float(result.moves)}
        self.stats_actor.log_batch.remote(game_stats, self.step)
        if self.metrics_logger is not None:
            self.metrics_logger.log(game_stats, self.step)

    def _save(self, *, final: bool = False) -> None:
        if self.data is None:
            return
        began = time.perf_counter()
        handle = self.data.save_training_state(
            self.network,
            self.learner.optimizer,
            self.stats_actor,
            self.buffer,
            self.step,
            self.summary.episodes_played,
            self.summary.total_simulations,
            is_final=final,
            scheduler=getattr(self.learner, "scheduler", None),
            metrics={
                **({} if self.loss is None else {"loss": self.loss}),
                "buffer_size": float(len(self.buffer)),
                "episodes_played": float(self.summary.episodes_played),
            },
        )
        if handle is not None:
            self.stall_ms = (time.perf_counter() - began) * 1000
            self.summary.save_stalls_ms.append(self.stall_ms)
            self.pending.append(handle)

    def _check_commits(self) -> None:
        still = []
        for handle in self.pending:
            if handle.committed.done():
                handle.result()  # raises the save's error, if any
                self.committed_step = handle.step
            else:
                still.append(handle)
        self.pending = still

    def _info(self) -> ProgressInfo:
        return ProgressInfo(
            self.step,
            self.loss,
            len(self.buffer),
            self.summary.episodes_played,
            self.committed_step,
            self.stall_ms,
        )

    def run(self, workers: list[Any], stop: _StopRequest, bar: Progress) -> None:
        import ray

        train = self.configs.train
        target = train.MAX_TRAINING_STEPS
        assert target is not None
        version = 0
        weights = ray.put(self.network.get_weights())
        in_flight = {worker.play.remote([weights], version): worker for worker in workers}
        began: float | None = None
        while self.step < target and stop.reason is None:
            ready = self.buffer.is_ready()
            done, _ = ray.wait(
                list(in_flight), num_returns=len(in_flight), timeout=0 if ready else 0.2
            )
            for ref in done:
                worker = in_flight.pop(ref)
                self._take_game(ray.get(ref))
                in_flight[worker.play.remote([weights], version)] = worker
            self._check_commits()
            sample = self.buffer.sample(train.BATCH_SIZE, current_train_step=self.step)
            if sample is None:
                bar.update(self._info())
                continue
            began = began or time.perf_counter()
            losses, errors = self.learner.train_step(sample)
            self.buffer.update_priorities(sample["indices"], errors)
            self.step += 1
            self.loss = losses["loss"]
            if self.step % train.WORKER_UPDATE_FREQ_STEPS == 0:
                version += 1
                weights = ray.put(self.network.get_weights())
            stats = {f"train/{name}": value for name, value in losses.items()}
            stats["buffer/size"] = float(len(self.buffer))
            self.stats_actor.log_batch.remote(stats, self.step)
            if self.metrics_logger is not None and self.step % _STATS_EVERY == 0:
                self.metrics_logger.log(stats, self.step)
            self._save()
            bar.update(self._info())
        self._save(final=True)
        if self.data is not None:
            self.data.wait_until_finished()
            for handle in self.pending:
                handle.result()
                self.committed_step = handle.step
            self.pending = []
        if began is not None:
            self.summary.train_seconds = time.perf_counter() - began
        self.summary.final_step = self.step
        self.summary.buffer_size = len(self.buffer)
        bar.update(self._info(), force_log=True)
