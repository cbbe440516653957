"""Retention policies: each alone, composed, and a stateful model of a long run."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from alphatriangle.data import (
    AllOf,
    AnyOf,
    CheckpointManager,
    CheckpointManagerOptions,
    KeepAll,
    KeepBest,
    KeepEvery,
    KeepInterval,
    KeepLatest,
    KeepRecent,
    RetentionPolicy,
    StepInfo,
)


def _infos(*triples: tuple[int, float, dict[str, float]]) -> list[StepInfo]:
    return [StepInfo(step, time, metrics) for step, time, metrics in triples]


STEPS = _infos(
    (100, 0.0, {"loss": 3.0}),
    (200, 10.0, {"loss": math.nan}),
    (300, 20.0, {"loss": 1.0}),
    (400, 30.0, {}),
    (500, 40.0, {"loss": math.inf}),
    (1000, 50.0, {"loss": 2.0}),
    (1100, 60.0, {"loss": 1.0}),
)


@pytest.mark.parametrize(
    ("policy", "kept"),
    [
        (KeepAll(), {100, 200, 300, 400, 500, 1000, 1100}),
        (KeepLatest(2), {1000, 1100}),
        (KeepLatest(0), set()),
        (KeepLatest(50), {100, 200, 300, 400, 500, 1000, 1100}),
        (KeepEvery(steps=500), {500, 1000}),
        (KeepBest(2, "loss", "min", keep_unranked=False), {300, 1100}),  # tie: both at 1.0
        (KeepBest(1, "loss", "min", keep_unranked=False), {1100}),  # tie goes to the newer
        (KeepBest(1, "loss", "max", keep_unranked=False), {100}),  # inf and NaN never best
        (KeepBest(3, metric="accuracy", keep_unranked=False), set()),  # missing everywhere
        # NaN and inf rank below every finite value (newer first among them).
        (KeepBest(5, "loss", "min", keep_unranked=False), {100, 300, 500, 1000, 1100}),
        (KeepBest(6, "loss", "max", keep_unranked=False), {100, 200, 300, 500, 1000, 1100}),
        # Orbax keeps checkpoints saved without the metric (keep_checkpoints_without_metrics,
        # its default); so does KeepBest by default: only a missing metric is unranked.
        (KeepBest(1, metric="loss", mode="min"), {400, 1100}),
        (KeepBest(3, metric="accuracy"), {100, 200, 300, 400, 500, 1000, 1100}),
        (KeepInterval(seconds=25), {100, 400, 1100}),
        (KeepRecent(seconds=15), {1000, 1100}),
        (KeepLatest(1) | KeepEvery(steps=1000), {1000, 1100}),
        (KeepEvery(steps=100) & KeepRecent(seconds=25), {500, 1000, 1100}),
    ],
    ids=repr,
)
def test_each_policy_decides(policy: RetentionPolicy, kept: set[int]) -> None:
    assert policy.keep(STEPS, now=60.0) == kept


def test_diverged_steps_are_not_kept_as_unranked() -> None:
    losses = [0.5, math.nan, 0.9, math.nan, math.inf, 0.7, -math.inf]
    infos = _infos(*((step, float(step), {"loss": v}) for step, v in enumerate(losses)))
    assert KeepBest(2, "loss", "min").keep(infos, now=10.0) == {0, 5}
    assert KeepBest(2, "loss", "max").keep(infos, now=10.0) == {2, 5}


def test_compositions_flatten_and_are_frozen() -> None:
    a, b, c = KeepLatest(1), KeepEvery(steps=10), KeepBest(1, metric="loss")
    combined = a | b | c
    assert combined == AnyOf((a, b, c))
    assert (a & b) & c == AllOf((a, b, c))
    assert isinstance((a | b) & c, AllOf)
    assert list(combined.parts()) == [combined, a, b, c]
    with pytest.raises(AttributeError):
        a.n = 5  # type: ignore[misc]
    with pytest.raises(TypeError, match="compose"):
        _ = a | 3  # type: ignore[operator]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: KeepLatest(-1), "KeepLatest.n must be >= 0"),
        (lambda: KeepEvery(steps=0), "KeepEvery.steps must be >= 1"),
        (lambda: KeepBest(0, metric="loss"), "KeepBest.k must be >= 1"),
        (lambda: KeepBest(1, metric=""), "KeepBest.metric"),
        (lambda: KeepBest(1, metric="loss", mode="lowest"), "KeepBest.mode"),  # type: ignore[arg-type]
        (lambda: KeepInterval(seconds=0), "KeepInterval.seconds must be > 0"),
        (lambda: KeepRecent(seconds=-5), "KeepRecent.seconds must be > 0"),
    ],
)
def test_bad_policy_arguments_name_the_field(build: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()  # type: ignore[operator]


def test_interval_decisions_are_stable_as_steps_are_pruned() -> None:
    policy = KeepInterval(seconds=10)
    kept: list[StepInfo] = []
    for t in range(100):
        kept.append(StepInfo(t, float(t) * 3.0))
        decided = policy.keep(kept, now=t * 3.0)
        before = {s.step for s in kept[:-1]}
        kept = [s for s in kept if s.step in decided or s.step == t]
        # Once kept (apart from the newest), a step is never dropped later.
        assert before & decided == before & {s.step for s in kept}
    times = [s.wall_time for s in kept]
    assert all(later - earlier >= 10 for earlier, later in itertools.pairwise(times[:-1]))


def test_best_step_and_default_retention(ckpt_dir: Path) -> None:
    clock = iter(range(1000))
    options = CheckpointManagerOptions(
        retention=KeepLatest(1) | KeepBest(1, metric="loss"),
    )
    with CheckpointManager(ckpt_dir, options, clock=lambda: float(next(clock))) as manager:
        for step, loss in enumerate([5.0, 1.0, math.nan, 3.0, 4.0]):
            manager.save(step, {"step": step}, metrics={"loss": loss})
        manager.wait_until_finished()
        assert manager.all_steps() == [1, 4]  # 2 (NaN) ranks worst: not kept
        assert manager.best_step() == 1
    explicit = CheckpointManagerOptions(best_metric="loss", best_mode="max", retention=KeepAll())
    with CheckpointManager(ckpt_dir, explicit) as manager:
        assert manager.best_step() == 4
    assert CheckpointManagerOptions().retention == KeepLatest(3)
    with (
        CheckpointManager(ckpt_dir, CheckpointManagerOptions(retention=KeepAll())) as manager,
        pytest.raises(ValueError, match="ranking"),
    ):
        manager.best_step()


# -- a stateful model ---------------------------------------------------------------------


def _reference_keep(policy: RetentionPolicy, infos: Sequence[StepInfo], now: float) -> set[int]:
    """Deliberately naive restatement of each policy's documented rule."""
    steps = [i.step for i in infos]
    if isinstance(policy, KeepAll):
        return set(steps)
    if isinstance(policy, KeepLatest):
        return set(sorted(steps)[-policy.n :]) if policy.n else set()
    if isinstance(policy, KeepEvery):
        return {s for s in steps if s % policy.steps == 0}
    if isinstance(policy, KeepRecent):
        return {i.step for i in infos if now - i.wall_time <= policy.seconds}
    if isinstance(policy, KeepInterval):
        kept, last = set(), None
        for info in sorted(infos, key=lambda i: i.step):
            if last is None or info.wall_time - last >= policy.seconds:
                kept.add(info.step)
                last = info.wall_time
        return kept
    if isinstance(policy, KeepBest):
        ranked = [
            (i.metrics[policy.metric], i.step)
            for i in infos
            if policy.metric in i.metrics and math.isfinite(i.metrics[policy.metric])
        ]
        best = sorted(ranked, key=lambda p: (p[0] if policy.mode == "min" else -p[0], -p[1]))
        diverged = sorted(
            (
                i.step
                for i in infos
                if policy.metric in i.metrics and not math.isfinite(i.metrics[policy.metric])
            ),
            reverse=True,
        )
        order = [step for _, step in best] + diverged
        unranked = {i.step for i in infos if policy.metric not in i.metrics}
        return set(order[: policy.k]) | (unranked if policy.keep_unranked else set())
    if isinstance(policy, AnyOf):
        return set().union(*(_reference_keep(p, infos, now) for p in policy.policies))
    if isinstance(policy, AllOf):
        kept = set(steps)
        for p in policy.policies:
            kept &= _reference_keep(p, infos, now)
        return kept
    raise AssertionError(policy)


_simple = st.one_of(
    st.builds(KeepLatest, st.integers(0, 4)),
    st.builds(KeepEvery, steps=st.integers(1, 5)),
    st.builds(
        KeepBest,
        st.integers(1, 3),
        st.just("loss"),
        st.sampled_from(["min", "max"]),
        keep_unranked=st.booleans(),
    ),
    st.builds(KeepInterval, seconds=st.integers(1, 30)),
    st.builds(KeepRecent, seconds=st.integers(1, 30)),
)
_policies = st.recursive(
    _simple,
    lambda inner: st.one_of(
        st.tuples(inner, inner).map(lambda p: p[0] | p[1]),
        st.tuples(inner, inner).map(lambda p: p[0] & p[1]),
    ),
    max_leaves=4,
)
_metric = st.one_of(
    st.none(), st.floats(-10, 10), st.just(math.nan), st.just(math.inf), st.just(-math.inf)
)


class RetentionMachine(RuleBasedStateMachine):
    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.directory = directory
        self.now = 0.0
        self.next_step = 0
        self.model: dict[int, StepInfo] = {}

    @initialize(policy=_policies)
    def open(self, policy: RetentionPolicy) -> None:
        self.options = CheckpointManagerOptions(retention=policy)
        self.manager = CheckpointManager(self.directory, self.options, clock=lambda: self.now)

    @rule(gap=st.integers(1, 3), elapsed=st.integers(0, 12), loss=_metric)
    def save(self, gap: int, elapsed: int, loss: float | None) -> None:
        self.now += elapsed
        step = self.next_step
        self.next_step += gap
        metrics = {} if loss is None else {"loss": loss}
        self.manager.save(step, {"step": step}, metrics=metrics)
        self.manager.wait_until_finished()
        self.model[step] = StepInfo(step, self.now, metrics)
        infos = [self.model[s] for s in sorted(self.model)]
        kept = _reference_keep(self.options.retention, infos, self.now) | {step}
        self.model = {s: i for s, i in self.model.items() if s in kept}

    @precondition(lambda self: bool(self.model))
    @rule()
    def reopen(self) -> None:
        self.manager.close()
        self.manager = CheckpointManager(self.directory, self.options, clock=lambda: self.now)
        assert self.manager.all_steps() == sorted(self.model)

    @invariant()
    def matches_model(self) -> None:
        if not hasattr(self, "manager"):
            return
        assert self.manager.all_steps() == sorted(self.model)
        if self.model:
            newest = max(self.model)
            assert self.manager.latest_step() == newest
            assert self.manager.restore()["step"] == newest
        on_disk = sorted(p.name for p in self.directory.iterdir() if p.name.startswith("step_"))
        assert on_disk == [f"step_{s:09d}" for s in sorted(self.model)]

    def teardown(self) -> None:
        if hasattr(self, "manager"):
            self.manager.close()


def test_retention_matches_a_reference_model(tmp_path_factory: pytest.TempPathFactory) -> None:
    from hypothesis import settings

    def factory() -> RetentionMachine:
        return RetentionMachine(tmp_path_factory.mktemp("retention"))

    run_state_machine_as_test(factory, settings=settings(max_examples=30, stateful_step_count=25))
