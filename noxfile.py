"""Sessions that build their own environments: tests, lint, demo, bench.

Every session installs the CPU build of torch first, so that resolving the package's plain
``torch`` requirement never pulls a multi-GB CUDA build by accident. On a machine with a GPU,
set ``ALPHATRIANGLE_TORCH`` (and, if needed, ``ALPHATRIANGLE_TORCH_INDEX``) to the build wanted.
"""

from __future__ import annotations

import os

import nox
from nox.command import CommandFailed

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True

TORCH_SPEC = os.environ.get("ALPHATRIANGLE_TORCH", "torch==2.13.0")
TORCH_INDEX = os.environ.get("ALPHATRIANGLE_TORCH_INDEX")


def _install(session: nox.Session, extras: str = "") -> None:
    torch_args = [TORCH_SPEC]
    if TORCH_INDEX:
        torch_args += ["--index-url", TORCH_INDEX]
    session.install(*torch_args)
    session.install("-e", f".{extras}")


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite (CUDA tests skip themselves without a GPU)."""
    _install(session, "[dev]")
    session.run("pytest", *(session.posargs or ["-q"]))


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check, ruff format --check, mypy strict on the package."""
    _install(session, "[dev]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")


@nox.session
def demo(session: nox.Session) -> None:
    """The main job: the reference training run (``alphatriangle train --preset quick``, a
    small network, about a minute on 2 CPU cores): checkpoints and a local MLflow store under
    ./.alphatriangle_data, local Ray. Arguments go to ``alphatriangle train`` after the
    preset (``nox -s demo -- --steps 200``)."""
    _install(session)
    session.run("alphatriangle", "train", "--preset", "quick", *session.posargs)


# Peers the benchmarks compare against; each is installed on its own, and one that cannot
# be installed is reported as absent by the benchmarks, not dropped silently.
BENCH_PEERS = ["safetensors", "orbax-checkpoint", "jax[cpu]", "matplotlib"]


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmarks (JSON under benchmarks/results/), then the plots and the report."""
    _install(session, "[dev]")
    for peer in BENCH_PEERS:
        try:
            session.install(peer)
        except CommandFailed:
            session.warn(f"{peer} could not be installed: the benchmarks report it as absent")
    scripts = session.posargs or [
        "benchmarks/bench_sweep.py",
        "benchmarks/bench_save.py",
        "benchmarks/bench_training.py",
        "benchmarks/bench_train_loop.py",
        "benchmarks/bench_buffer.py",
        "benchmarks/bench_data_manager.py",
        "benchmarks/bench_retention.py",
        "benchmarks/gpu_check.py",
    ]
    for script in scripts:
        session.run("python", script)
    session.run("python", "benchmarks/plot.py")
