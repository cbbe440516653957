"""A DDP training loop that saves with the manager and resumes: run under torchrun.

    torchrun --standalone --nproc-per-node 2 ddp_loop.py DIRECTORY train|resume

``train``: 8 steps, saving steps 2 and 4; rank 0 writes the final weights beside the
checkpoints. ``resume``: restores the newest step (4) into a fresh model and optimizer, trains
steps 5 to 8, and checks that it ends with the same weights, bit for bit.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.nn.parallel import DistributedDataParallel

from alphatriangle.data import CheckpointManager, CheckpointManagerOptions, SaveOnSteps

STEPS = 8


def _batch(step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(16, 8, generator=generator), torch.randn(16, 4, generator=generator)


def main(directory: Path, phase: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = DistributedDataParallel(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    options = CheckpointManagerOptions(save_policy=SaveOnSteps([2, 4]), collective_timeout_s=30)
    with CheckpointManager(directory, options, process_group=dist.group.WORLD) as manager:
        start = 1
        if phase == "resume":
            model_state, optimizer_state = get_state_dict(model, optimizer)  # the target
            state = {"model": model_state, "optimizer": optimizer_state, "step": 0}
            manager.restore(target=state)
            set_state_dict(
                model,
                optimizer,
                model_state_dict=state["model"],
                optim_state_dict=state["optimizer"],
            )
            start = state["step"] + 1
            assert start == 5, start
        for step in range(start, STEPS + 1):
            inputs, targets = _batch(step, rank)
            optimizer.zero_grad()
            nn.functional.mse_loss(model(inputs), targets).backward()
            optimizer.step()
            if manager.should_save(step):
                model_state, optimizer_state = get_state_dict(model, optimizer)
                manager.save(
                    step, {"model": model_state, "optimizer": optimizer_state, "step": step}
                )
        manager.wait_until_finished()
        assert manager.all_steps() == [2, 4], manager.all_steps()
    weights = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
    if rank == 0 and phase == "train":
        torch.save(weights, directory / "final.pt")
    if phase == "resume":
        expected = torch.load(directory / "final.pt")
        for key, value in expected.items():
            assert torch.equal(weights[key], value), key
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
