"""Copying a state's leaves into their places in a staging buffer, as fast as each kind
allows: small CPU tensors in one batched call, large ones by a single-threaded memcpy each,
CUDA tensors with non-blocking copies on a dedicated stream. ``staging.py`` decides the
places; this module only copies. Guarantee: when :func:`copy_leaves` returns, every byte is
in the buffer (CUDA streams synchronised). Cost: the copies, and one Python call per large,
numpy or CUDA leaf.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from alphatriangle.data.checkpoint.arrays import BYTE_COPIED

__all__ = ["LARGE_COPY", "copy_leaves"]


_copy_streams: dict[torch.device, torch.cuda.Stream] = {}


def _copy_stream(device: torch.device) -> torch.cuda.Stream:
    """One dedicated copy stream per CUDA device, created on first use."""
    stream = _copy_streams.get(device)
    if stream is None:
        # torch.cuda.Stream.__init__ carries no annotations.
        stream = _copy_streams[device] = torch.cuda.Stream(device=device)  # type: ignore[no-untyped-call]
    return stream


_foreach_copy = getattr(torch, "_foreach_copy_", None)
# A CPU tensor this large is copied by one single-threaded memcpy (numpy's, as the copy floor
# is): torch's copy_ splits it between intra-op threads, which on a busy machine wait for
# each other (3x slower measured on 2 loaded cores); smaller ones go in one batched call.
LARGE_COPY = 1 << 20


def _copy_bytes(target: torch.Tensor, leaf: torch.Tensor) -> None:
    """``target.copy_(leaf)`` as a memcpy when ``leaf`` is a plain contiguous tensor."""
    if leaf.is_contiguous() and not (leaf.is_conj() or leaf.is_neg()):
        source = leaf.detach().reshape(-1).view(torch.uint8).numpy()
        np.copyto(target.reshape(-1).view(torch.uint8).numpy(), source)
    else:
        target.copy_(leaf)


def copy_leaves(
    leaves: list[Any],
    targets: list[Any],
    *,
    batched: list[int] | None,
    large: list[int],
    others: list[int],
) -> None:
    """Copy each leaf into its target (the same dtype and shape, in the staging buffer):
    ``batched`` (None: all) CPU tensors in one ``_foreach_copy_`` call, ``large`` ones by
    one memcpy each, ``others`` (numpy arrays, CUDA tensors, dtypes without a copy kernel)
    one by one, CUDA ones on a copy stream that first waits for the current one. Returns once
    every copy is done."""
    with torch.no_grad():  # the copies are no part of any graph: no detach per leaf
        if batched is None:
            cpu_sources, cpu_targets = leaves, targets
        else:
            cpu_sources = [leaves[i] for i in batched]
            cpu_targets = [targets[i] for i in batched]
        if _foreach_copy is not None and cpu_targets:
            _foreach_copy(cpu_targets, cpu_sources)
        else:
            for target, source in zip(cpu_targets, cpu_sources, strict=True):
                target.copy_(source)
        for index in large:
            _copy_bytes(targets[index], leaves[index])
        used_streams: list[torch.cuda.Stream] = []
        for index in others:
            leaf, target = leaves[index], targets[index]
            if isinstance(leaf, np.ndarray):
                np.copyto(target, leaf, casting="no")
                continue
            if leaf.dtype in BYTE_COPIED:
                leaf = leaf.view(torch.uint8)
                if leaf.device.type == "cpu":
                    target.copy_(leaf)
                    continue
            stream = _copy_stream(leaf.device)
            if stream not in used_streams:
                # Kernels queued on the training stream must finish writing first.
                stream.wait_stream(torch.cuda.current_stream(leaf.device))
                used_streams.append(stream)
            with torch.cuda.stream(stream):
                target.copy_(leaf, non_blocking=True)
        for stream in used_streams:
            stream.synchronize()
