"""How staging copies each leaf of a state into its view of a host buffer: by the cheapest
means that is exact for that leaf.

- CPU tensors: one batched ``torch._foreach_copy_`` (conjugation and negation resolved,
  any strides; a tensor past torch's parallel grain, 32,768 elements, is copied by several
  threads).
- numpy arrays of 4 MiB or more, of a dtype torch has, contiguous and writeable at the time
  of the copy: in the same batched call, through ``torch.from_numpy``, so on several threads
  too (``np.copyto`` copies on one); other arrays: ``np.copyto``. Against the same saves
  with every array through ``np.copyto``: stalls of 0.91-0.95x at 100 MB and 0.75-0.98x at
  500 MB, and 1.02-1.03x at 10 MB with the threshold lowered to 0 (its arrays are 1 and
  1.5 MB); ``python benchmarks/bench_staging_copy.py``, four and three runs.
- Dtypes with no copy kernel: as uint8 views of their bytes.
- CUDA tensors: on one dedicated copy stream per device (after the kernels queued on the
  current stream), into pinned memory, waited on before :meth:`CopyPlan.run` returns.

A plan holds for sources of the types, dtypes, shapes and devices it was made for: the
caller checks that before running it (``staging._StagingLayout.fits``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from alphatriangle.data.checkpoint.arrays import BYTE_COPIED, ArraySpec

__all__ = ["CopyPlan"]

_THREADED_ARRAYS_FROM = 1 << 22  # bytes
_foreach_copy = getattr(torch, "_foreach_copy_", None)
_copy_streams: dict[torch.device, torch.cuda.Stream] = {}


def _copy_stream(device: torch.device) -> torch.cuda.Stream:
    """One dedicated copy stream per CUDA device, created on first use."""
    stream = _copy_streams.get(device)
    if stream is None:
        # torch.cuda.Stream.__init__ carries no annotations.
        stream = _copy_streams[device] = torch.cuda.Stream(device=device)  # type: ignore[no-untyped-call]
    return stream


def _as_tensor(array: np.ndarray[Any, Any]) -> torch.Tensor | None:
    """A tensor over ``array``'s memory, or None for a dtype torch has not."""
    try:
        return torch.from_numpy(array)
    except (TypeError, ValueError):  # a string or datetime dtype; a non-native byte order
        return None


@dataclass(frozen=True)
class CopyPlan:
    """How each data entry of a placement is copied: ``targets[i]`` receives ``sources[i]``
    for sources of the dtypes, shapes, devices and types the plan was made for."""

    targets: list[Any]  # per entry, its view of the buffer (tensor or ndarray)
    batched: list[int] | None  # CPU tensors, in one batched call; None: every entry
    arrays: list[tuple[int, torch.Tensor]]  # large numpy arrays, their targets as tensors
    others: list[int]  # other arrays, byte-copied dtypes, CUDA tensors: one by one

    @classmethod
    def of(
        cls,
        sources: list[Any],
        specs: list[ArraySpec],
        buffer: torch.Tensor,
        array: np.ndarray[Any, np.dtype[np.uint8]],
    ) -> CopyPlan:
        """The plan for ``sources``, each copied to where its spec places it in ``buffer``
        (a flat uint8 tensor; ``array``: the same memory as numpy)."""
        targets: list[Any] = []
        batched: list[int] = []
        arrays: list[tuple[int, torch.Tensor]] = []
        others: list[int] = []
        for entry, (source, spec) in enumerate(zip(sources, specs, strict=True)):
            region = slice(spec.offset, spec.offset + spec.nbytes)
            target: Any
            if isinstance(source, np.ndarray):
                target = array[region].view(source.dtype).reshape(source.shape)
                view = _as_tensor(target) if source.nbytes >= _THREADED_ARRAYS_FROM else None
                if view is None:
                    others.append(entry)
                else:
                    arrays.append((entry, view))
            elif source.dtype in BYTE_COPIED:  # no copy kernel: its bytes are copied as uint8
                target = buffer[region].view(source.shape)
                others.append(entry)
            else:
                target = buffer[region].view(source.dtype).view(source.shape)
                (others if source.device.type == "cuda" else batched).append(entry)
            targets.append(target)
        every = len(batched) == len(targets)
        return cls(targets, None if every else batched, arrays, others)

    def run(self, sources: list[Any]) -> None:
        """Copy ``sources`` into the targets; CUDA copies have finished when this returns."""
        targets = self.targets
        # The copies are no part of any graph: grad mode off (no detach per leaf) through
        # torch's C function (``torch.no_grad()`` costs a dozen Python calls), then restored.
        grad_enabled = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)
        try:
            if self.batched is None:  # (then there are no arrays to add to the lists)
                into, froms = targets, sources
            else:
                into = [targets[i] for i in self.batched]
                froms = [sources[i] for i in self.batched]
            for entry, view in self.arrays:
                source = sources[entry]
                flags = source.flags
                if flags.c_contiguous and flags.writeable:  # else from_numpy would warn
                    into.append(view)
                    froms.append(torch.from_numpy(source))
                else:
                    np.copyto(targets[entry], source, casting="no")
            if into and _foreach_copy is not None:
                _foreach_copy(into, froms)
            else:
                for target, source in zip(into, froms, strict=True):
                    target.copy_(source)
            self._copy_others(sources)
        finally:
            torch._C._set_grad_enabled(grad_enabled)

    def _copy_others(self, sources: list[Any]) -> None:
        targets = self.targets
        used_streams: list[torch.cuda.Stream] = []
        for entry in self.others:
            source, target = sources[entry], targets[entry]
            if isinstance(source, np.ndarray):
                np.copyto(target, source, casting="no")
                continue
            if source.dtype in BYTE_COPIED:
                source = source.view(torch.uint8)
                if source.device.type == "cpu":
                    target.copy_(source)
                    continue
            stream = _copy_stream(source.device)
            if stream not in used_streams:
                # Kernels queued on the training stream must finish writing first.
                stream.wait_stream(torch.cuda.current_stream(source.device))
                used_streams.append(stream)
            with torch.cuda.stream(stream):
                target.copy_(source, non_blocking=True)
        for stream in used_streams:
            stream.synchronize()
