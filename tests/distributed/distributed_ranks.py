"""What each rank runs in the multi-rank tests: spawned processes, gloo on CPU, real files.

Every function here is the body of one rank (``run_ranks`` starts them); an assertion that
fails in a rank fails the test with that rank's traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

GROUP_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _entry(
    rank: int, world: int, port: int, body: Callable[..., None], args: tuple[Any, ...]
) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=GROUP_TIMEOUT_S),
    )
    try:
        body(rank, world, *args)
    except BaseException:
        # Every rank's own traceback in the test's output (the spawner reports only one).
        sys.stderr.write(f"rank {rank} failed:\n{traceback.format_exc()}")
        raise
    finally:
        dist.destroy_process_group()


# Ranks are forked from a server that imported torch and the engine once: a rank starts in
# milliseconds, not seconds (a fresh interpreter, as spawn makes, would import them again).
_START = "forkserver"
mp.set_forkserver_preload(["torch", "torch.distributed.checkpoint", "alphatriangle.data"])


def run_ranks(body: Callable[..., None], world: int, *args: Any) -> None:
    """Run ``body(rank, world, *args)`` on ``world`` new ranks; raises if any rank fails."""
    mp.start_processes(
        _entry,
        args=(world, free_port(), body, args),
        nprocs=world,
        join=True,
        start_method=_START,
    )


def start_ranks(body: Callable[..., None], world: int, *args: Any) -> mp.ProcessContext:
    """Like :func:`run_ranks`, without waiting: the caller joins (and sees who died)."""
    context = mp.start_processes(
        _entry,
        args=(world, free_port(), body, args),
        nprocs=world,
        join=False,
        start_method=_START,
    )
    assert context is not None
    return context


# ---------------------------------------------------------------------------- the state


def _model(mesh: Any, seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A model whose parameters are row-sharded DTensors (5 and 3 rows: uneven over 2, 3 and
    4 ranks), with Adam state after one step."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 3))
    for module in model:
        for name, param in list(module.named_parameters(recurse=False)):
            sharded = distribute_tensor(param.detach(), mesh, [Shard(0)])
            module.register_parameter(name, nn.Parameter(sharded))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for param in model.parameters():
        param.grad = distribute_tensor(torch.randn(param.shape), mesh, [Shard(0)])
    optimizer.step()
    return model, optimizer


def training_state(world: int, rank: int, seed: int) -> dict[str, Any]:
    """Model and optimizer (via DCP's get_state_dict), a row-sharded table of 7 rows, a
    replicated DTensor, a plain replicated tensor, and leaves that are no tensors."""
    mesh = init_device_mesh("cpu", (world,))
    model, optimizer = _model(mesh, seed)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    torch.manual_seed(seed + 1)
    table = distribute_tensor(torch.randn(7, 4), mesh, [Shard(0)])
    replicated = distribute_tensor(torch.randn(3, 3), mesh, [Replicate()])
    return {
        "model": model_state,
        "optimizer": optimizer_state,
        "table": table,
        "replicated": replicated,
        "plain": torch.arange(12, dtype=torch.float64).reshape(3, 4) * (seed + 1),
        "counters": {"step": 100 + seed, "seen_by": rank, "note": "hello"},
        "histogram": np.arange(5, dtype=np.int32) + seed,
        "_model": model,
        "_optimizer": optimizer,
    }


def saved_part(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in state.items() if not k.startswith("_")}


def full_values(tree: Any) -> Any:
    """The tree with each DTensor gathered whole (collective), tensors cloned."""
    if isinstance(tree, dict):
        return {k: full_values(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [full_values(v) for v in tree]
    if isinstance(tree, DTensor):
        return tree.full_tensor().detach().clone()
    if isinstance(tree, torch.Tensor):
        return tree.detach().clone()
    if isinstance(tree, np.ndarray):
        return tree.copy()
    return tree


def assert_same(actual: Any, expected: Any, path: str = "state") -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and set(actual) == set(expected), path
        for key in expected:
            assert_same(actual[key], expected[key], f"{path}[{key!r}]")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), path
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same(a, e, f"{path}[{i}]")
    elif isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), path
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, path
        assert torch.equal(actual, expected), f"{path}: values differ"
    elif isinstance(expected, np.ndarray):
        assert isinstance(actual, np.ndarray) and actual.dtype == expected.dtype, path
        assert np.array_equal(actual, expected), path
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


# ---------------------------------------------------------------------------- rank bodies


def _manager(directory: str, **options: Any) -> Any:
    """This rank's manager of ``directory``, over the default group (collective)."""
    from alphatriangle.data import CheckpointManager, CheckpointManagerOptions

    settings = CheckpointManagerOptions(collective_timeout_s=GROUP_TIMEOUT_S, **options)
    return CheckpointManager(directory, settings, process_group=dist.group.WORLD)


def _mutate(tree: Any) -> None:
    """Change every tensor, array and dict of ``tree`` in place."""
    if isinstance(tree, dict):
        for key, value in list(tree.items()):
            if isinstance(value, (int, str)) and not isinstance(value, bool):
                tree[key] = value * 2
            else:
                _mutate(value)
    elif isinstance(tree, list):
        for value in tree:
            _mutate(value)
    elif isinstance(tree, DTensor):
        with torch.no_grad():
            tree.to_local().add_(1000)
    elif isinstance(tree, torch.Tensor):
        with torch.no_grad():
            tree.add_(1000)
    elif isinstance(tree, np.ndarray):
        tree += 1000


def save_training(rank: int, world: int, directory: str, step: int, seed: int) -> None:
    """Save the training state as ``step``, changing every tensor as soon as ``save``
    returned (while the ranks write); rank 0 keeps the values it must restore to."""
    root = Path(directory)
    state = training_state(world, rank, seed)
    expected = full_values(saved_part(state))  # collective: each DTensor whole
    with _manager(directory) as manager:
        handle = manager.save(step, saved_part(state), metrics={"loss": 0.5})
        _mutate(saved_part(state))  # right after save returned, on every rank
        committed = handle.result()
        assert committed.name == f"step_{step:09d}", committed
    if rank == 0:
        torch.save(expected, root / f"expected_{step}.pt")
        manifest = json.loads((committed / "manifest.json").read_text())
        writers = {entry.get("rank") for entry in manifest["files"].values()} - {None}
        assert writers == set(range(world)), writers


def restore_training(rank: int, world: int, directory: str, step: int) -> None:
    """Restore ``step`` into a state of another world size and other values; compare whole."""
    root = Path(directory)
    state = training_state(world, rank, seed=99)
    target = saved_part(state)
    with _manager(directory) as manager:
        assert manager.restore(step, target=target) is target
    set_state_dict(
        state["_model"],
        state["_optimizer"],
        model_state_dict=target["model"],
        optim_state_dict=target["optimizer"],
    )
    model_state, optimizer_state = get_state_dict(state["_model"], state["_optimizer"])
    actual = full_values({**target, "model": model_state, "optimizer": optimizer_state})
    expected = torch.load(root / f"expected_{step}.pt", weights_only=False)
    assert_same(actual, expected)
    assert actual["counters"]["seen_by"] == 0  # other leaves: as rank 0 saved them


def fail_on_one_rank(rank: int, world: int, directory: str, failing: int) -> None:
    """``failing`` holds an object that cannot be pickled: every rank's save fails, nothing
    is committed; the next save commits; a corrupt shard then fails every rank's restore."""
    from alphatriangle.data.checkpoint.errors import CheckpointCorruptError, CheckpointError

    root = Path(directory)
    mesh = init_device_mesh("cpu", (world,))
    weights = distribute_tensor(torch.arange(8.0), mesh, [Shard(0)])
    state: dict[str, Any] = {"weights": weights, "extra": {"n": 1}}
    if rank == failing:
        state["extra"]["lock"] = threading.Lock()
    with _manager(directory) as manager:
        handle = manager.save(3, state)
        try:
            handle.result()
        except TypeError as exc:  # the original error, on its own rank
            assert rank == failing, exc
        except CheckpointError as exc:
            assert rank != failing and f"rank {failing}" in str(exc), exc
        else:
            raise AssertionError("the save did not fail")
        try:
            manager.wait_until_finished()  # raised to the caller too (and so seen)
        except (TypeError, CheckpointError):
            pass
        else:
            raise AssertionError("wait_until_finished did not raise the failure")
        assert manager.all_steps() == []
        assert not [p for p in root.iterdir() if p.name.startswith(".step_")]
        state["extra"].pop("lock", None)
        manager.save(3, state).result()
        with torch.no_grad():
            weights.to_local().mul_(10)
        path = manager.save(4, state).result()
        assert manager.all_steps() == [3, 4]
        # A corrupt shard: every rank's restore raises, naming the file and its writer.
        dist.barrier()
        shard = path / f"state.shards-{failing:05d}.data"
        if rank == 0:
            data = bytearray(shard.read_bytes())
            data[0] ^= 0xFF
            shard.write_bytes(bytes(data))
        dist.barrier()
        zeros = distribute_tensor(torch.zeros(8), mesh, [Shard(0)])
        target: dict[str, Any] = {"weights": zeros, "extra": {"n": 0}}
        try:
            manager.restore(4, target=target)
        except CheckpointCorruptError as exc:
            assert exc.path == str(shard) and f"written by rank {failing}" in str(exc), exc
        else:
            raise AssertionError("a corrupt shard was restored")
        manager.restore(target=target, fallback=True)  # every rank falls back to step 3
        assert torch.equal(target["weights"].full_tensor(), torch.arange(8.0))
        assert target["extra"] == {"n": 1}
        target["other"] = torch.zeros(2)  # a tensor the step lacks: named, on every rank
        try:
            manager.restore(3, target=target)
        except CheckpointError as exc:
            assert "other" in str(exc), exc
        else:
            raise AssertionError("a target with a tensor the step lacks was filled")


def retention_and_preemption(rank: int, world: int, directory: str) -> None:
    """Retention runs on rank 0 and every rank lists the same steps; a SIGTERM on one rank
    makes every rank save the same final step; a deletion reaches every rank's listing."""
    from alphatriangle.data import KeepLatest

    mesh = init_device_mesh("cpu", (world,))
    state = {"weights": distribute_tensor(torch.arange(6.0), mesh, [Shard(0)])}
    with _manager(directory, retention=KeepLatest(2), save_interval_steps=2) as manager:
        for step in range(1, 100):
            if manager.should_save(step):
                manager.save(step, state)
            if manager.preemption_requested:
                break
            if step == 8:
                manager.wait_until_finished()
                everyone = [None] * world
                dist.all_gather_object(everyone, manager.all_steps())
                assert everyone == [[6, 8]] * world, everyone
                if rank == world - 1:
                    os.kill(os.getpid(), signal.SIGTERM)  # recorded: agreed at the next step
        manager.wait_until_finished()
        assert step == 9, step  # not due, but agreed after the SIGTERM: the final save
        everyone = [None] * world
        dist.all_gather_object(everyone, manager.all_steps())
        assert everyone == [[8, 9]] * world, everyone
        manager.delete(8)  # every rank calls it: rank 0 deletes, every rank forgets
        dist.all_gather_object(everyone, manager.all_steps())
        assert everyone == [[9]] * world, everyone
    names = sorted(p.name for p in Path(directory).iterdir() if p.name.startswith("step_"))
    assert names == ["step_000000009"], names


def signed_steps(rank: int, world: int, directory: str) -> None:
    """A signing key: every rank's files carry their SHA-256, the manifest its signature; a
    changed byte in one rank's shard is refused on every rank."""
    from alphatriangle.data.checkpoint.errors import CheckpointCorruptError

    mesh = init_device_mesh("cpu", (world,))
    state = {"weights": distribute_tensor(torch.arange(6.0), mesh, [Shard(0)]), "n": 3}
    with _manager(directory, signing_key=b"k" * 32) as manager:
        path = manager.save(1, state).result()
        target = {"weights": distribute_tensor(torch.zeros(6), mesh, [Shard(0)]), "n": 0}
        manager.restore(1, target=target)
        assert torch.equal(target["weights"].full_tensor(), torch.arange(6.0)) and target["n"] == 3
        manifest = json.loads((path / "manifest.json").read_text())
        assert "signature" in manifest
        assert all("sha256_chunked" in entry for entry in manifest["files"].values())
        dist.barrier()
        if rank == 0:
            shard = path / f"state.shards-{world - 1:05d}.data"
            data = bytearray(shard.read_bytes())
            data[-1] ^= 0x01
            shard.write_bytes(bytes(data))
        dist.barrier()
        try:
            manager.restore(1, target=target)
        except CheckpointCorruptError:
            pass
        else:
            raise AssertionError("a changed shard of a signed step was restored")


def killed_mid_save(rank: int, world: int, directory: str, victim: int, outcome: str) -> None:
    """``victim`` is SIGKILLed once it writes its share; the others' saves must fail within
    the group's timeout, and commit nothing."""
    from alphatriangle.data.checkpoint.errors import CheckpointError

    root = Path(directory)
    mesh = init_device_mesh("cpu", (world,))
    weights = distribute_tensor(torch.ones(world * (16 << 20) // 4), mesh, [Shard(0)])
    manager = _manager(directory)
    if rank == victim:

        def kill_when_writing() -> None:
            while not any(root.glob(f".step_*/state.shards-{victim:05d}.data")):
                time.sleep(0.001)
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=kill_when_writing, daemon=True).start()
    handle = manager.save(5, {"weights": weights})
    started = time.monotonic()
    try:
        handle.result()
    except CheckpointError as exc:
        Path(outcome).write_text(json.dumps({"error": str(exc), "s": time.monotonic() - started}))
    else:
        Path(outcome).write_text(json.dumps({"error": None}))
    os._exit(0)  # the default group lost a rank: no clean teardown


def killed_before_commit(rank: int, world: int, directory: str) -> None:
    """Step 1 commits; during step 2 every rank is SIGKILLed once rank 0 has written the
    shards index, between the ranks' data writes and the commit."""
    from alphatriangle.data.checkpoint.errors import CheckpointError

    root = Path(directory)
    mesh = init_device_mesh("cpu", (world,))
    weights = distribute_tensor(torch.arange(world * 1024.0), mesh, [Shard(0)])
    manager = _manager(directory)
    manager.save(1, {"weights": weights}).result()

    def kill_at_commit() -> None:
        while not any(root.glob(".step_000000002.*/state.shards.json")):
            time.sleep(0.0005)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=kill_at_commit, daemon=True).start()
    with torch.no_grad():
        weights.to_local().add_(1)
    # The other rank may be killed first (it saw the index too) and this save fail: this
    # rank's kill is moments away all the same.
    with contextlib.suppress(CheckpointError):
        manager.save(2, {"weights": weights}).result()
    time.sleep(GROUP_TIMEOUT_S)  # the kill comes first
