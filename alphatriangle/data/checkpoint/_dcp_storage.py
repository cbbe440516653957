"""DCP's storage layer on this engine's files: where each rank's share of the tensors goes.

``torch.distributed.checkpoint`` (DCP) plans a multi-rank save (which rank writes which
tensor: a replicated tensor once, a DTensor as each rank's local shards) and a resharded
load (which stored chunks each rank reads into the layout it has now). This module is the
storage those plans run on, in DCP's own order (see ``torch.distributed.checkpoint.storage``):

save, :class:`RankWriter` (every rank; the coordinator is rank 0 of the group):
  1) ``prepare_local_plan`` raises the error this rank met while staging, so that DCP
     gathers it to every rank; 2) ``prepare_global_plan`` (coordinator) creates the step's
     temporary directory and hands its name to every rank in the plans; 3) ``write_data``
     writes this rank's share into one file, ``<item>.shards-<rank>.data``, the tensors
     back to back, each region's xxh3 beside the file's, fsynced; 4) ``finish``
     (coordinator) receives every rank's regions and hands them to the engine's commit.

load, :class:`RankReader`: ``read_metadata`` parses ``<item>.shards.json`` strictly (dtypes
from the engine's allow-list, ints, ranges); ``read_data`` reads each stored region once,
checks its xxh3 before anything is copied out of it (a mismatch names the file and the rank
that wrote it), and copies the requested box of it into the caller's tensor. A signed step:
each file read from is first checked whole against its SHA-256 digest (xxh3 resists
accidents, not forgery).

Nothing is pickled on disk (DCP's own ``.metadata`` is a pickle): the index is JSON.
Cost: one write of each rank's bytes plus a hashing pass beside it; a restore reads each
region it needs once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any

import torch
import xxhash
from torch.distributed._shard._utils import narrow_tensor_by_index
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import (
    LoadItemType,
    LoadPlan,
    LoadPlanner,
    ReadItem,
    SavePlan,
    SavePlanner,
    WriteItemType,
)
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter, WriteResult
from torch.futures import Future

from alphatriangle.data.checkpoint._fields import CHECKSUM
from alphatriangle.data.checkpoint._verified_files import check_file
from alphatriangle.data.checkpoint.arrays import TORCH_DTYPES
from alphatriangle.data.checkpoint.commit import write_new_file
from alphatriangle.data.checkpoint.errors import CheckpointError, corrupt_file
from alphatriangle.data.checkpoint.layout import shard_file
from alphatriangle.data.checkpoint.manifest import Manifest
from alphatriangle.data.checkpoint.signing import DIGEST_CHUNK, FILE_DIGEST

__all__ = [
    "SHARDS_INDEX_VERSION",
    "RankReader",
    "RankWriter",
    "Region",
    "metadata_from_json",
    "metadata_to_json",
]

SHARDS_INDEX_VERSION = 1
_DTYPE_NAMES = {dtype: name for name, dtype in TORCH_DTYPES.items()}


@dataclass(frozen=True)
class Region:
    """One stored chunk: ``nbytes`` at ``offset`` of ``file`` (written by ``rank``), a
    tensor of ``dtype`` and ``sizes``; ``file_size`` and ``file_xxh3`` describe the whole file
    (for the manifest)."""

    file: str
    rank: int
    offset: int
    nbytes: int
    xxh3: str
    dtype: str
    sizes: tuple[int, ...]
    file_size: int = 0
    file_xxh3: str = ""
    file_sha256_chunked: str = ""

    def file_entry(self) -> dict[str, Any]:
        """The manifest's entry of the file this region lies in."""
        entry: dict[str, Any] = {"size": self.file_size, CHECKSUM: self.file_xxh3}
        if self.file_sha256_chunked:
            entry[FILE_DIGEST] = self.file_sha256_chunked
        return entry | {"rank": self.rank}


def _chunk_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().reshape(-1)
    if flat.device.type != "cpu":
        flat = flat.cpu()
    return flat.view(torch.uint8).numpy().data


class _FileDigests:
    """The xxh3 of each region and of the whole file; with ``signed``, also the file's
    ``sha256_chunked`` (``signing.ChunkedDigest``'s value, fed region by region)."""

    def __init__(self, *, signed: bool) -> None:
        self.regions: list[str] = []
        self.whole = xxhash.xxh3_64()
        self.signed = signed
        self._chunks: list[bytes] = []
        self._chunk = hashlib.sha256()
        self._filled = 0

    def update(self, views: list[memoryview]) -> None:
        for view in views:
            self.whole.update(view)
            self.regions.append(xxhash.xxh3_64_hexdigest(view))
            rest = view
            while self.signed and rest.nbytes:
                take = min(DIGEST_CHUNK - self._filled, rest.nbytes)
                self._chunk.update(rest[:take])
                self._filled += take
                rest = rest[take:]
                if self._filled == DIGEST_CHUNK:
                    self._chunks.append(self._chunk.digest())
                    self._chunk, self._filled = hashlib.sha256(), 0

    def sha256_chunked(self) -> str:
        if self._filled:
            self._chunks.append(self._chunk.digest())
            self._chunk, self._filled = hashlib.sha256(), 0
        return hashlib.sha256(b"".join(self._chunks)).hexdigest()


def _write_regions(path: Path, views: list[memoryview], *, signed: bool) -> _FileDigests:
    """Write ``views`` back to back into a new file, fsync it; hashed on another thread
    meanwhile."""
    digests = _FileDigests(signed=signed)
    hashing = threading.Thread(target=digests.update, args=(views,), name="checksum")
    hashing.start()
    try:
        write_new_file(path, *views)
    finally:
        hashing.join()
    return digests


@dataclass(eq=False)
class RankWriter(StorageWriter):
    """One rank's writer of one item (see the module docstring for the order of the calls).

    ``staging_error`` is the error this rank met while capturing its state (raised at the
    first step, so that every rank learns of it); ``create_directory`` (coordinator) makes
    the step's temporary directory; ``write_own`` (coordinator) writes the files rank 0
    adds beside its share, in ``write_data`` (so beside the other ranks' writes), and returns
    their manifest entries; ``on_finish`` (coordinator) gets every rank's regions.
    ``signed``: each file also gets its SHA-256 digest (``signing.py``)."""

    item: str
    _: KW_ONLY
    staging_error: BaseException | None
    create_directory: Callable[[], Path]
    on_finish: Callable[[Metadata, list[list[WriteResult]]], None]
    write_own: Callable[[Path], None] | None = None
    signed: bool = False
    rank: int = field(default=0, init=False)  # both told by DCP (set_up_storage_writer)
    is_coordinator: bool = field(default=False, init=False)

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        pass

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self.rank = int(kwargs.get("rank", 0))
        self.is_coordinator = is_coordinator

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        if self.staging_error is not None:
            raise self.staging_error
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        directory = str(self.create_directory())
        return [dataclasses.replace(plan, storage_data=directory) for plan in plans]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        name = shard_file(self.item, self.rank)
        items, views = [], []
        for write_item in plan.items:
            if write_item.type == WriteItemType.BYTE_IO:
                raise CheckpointError(
                    f"{write_item.index.fqn}: objects travel apart, not as shards"
                )
            tensor = planner.resolve_data(write_item)
            assert isinstance(tensor, torch.Tensor)
            items.append((write_item, tensor))
            views.append(_chunk_bytes(tensor))
        if self.is_coordinator and self.write_own is not None:
            self.write_own(Path(plan.storage_data))
        results: list[WriteResult] = []
        if items:
            digests = _write_regions(Path(plan.storage_data) / name, views, signed=self.signed)
            sha256 = digests.sha256_chunked() if self.signed else ""
            size = sum(view.nbytes for view in views)
            offset = 0
            for (write_item, tensor), view, digest in zip(
                items, views, digests.regions, strict=True
            ):
                region = Region(
                    file=name,
                    rank=self.rank,
                    offset=offset,
                    nbytes=view.nbytes,
                    xxh3=digest,
                    dtype=_DTYPE_NAMES[tensor.dtype],
                    sizes=tuple(tensor.shape),
                    file_size=size,
                    file_xxh3=digests.whole.hexdigest(),
                    file_sha256_chunked=sha256,
                )
                results.append(WriteResult(write_item.index, view.nbytes, region))
                offset += view.nbytes
        future: Future[list[WriteResult]] = Future()
        future.set_result(results)
        return future

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        self.on_finish(metadata, results)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return False


def metadata_to_json(metadata: Metadata, results: list[list[WriteResult]]) -> dict[str, Any]:
    """The JSON form of DCP's metadata of one item and of where every chunk lies."""
    tensors: dict[str, Any] = {}
    for fqn, entry in metadata.state_dict_metadata.items():
        if not isinstance(entry, TensorStorageMetadata):
            raise CheckpointError(f"{fqn}: only tensors are stored as shards")
        tensors[fqn] = {
            "dtype": _DTYPE_NAMES[entry.properties.dtype],
            "requires_grad": bool(entry.properties.requires_grad),
            "size": list(entry.size),
            "chunks": [{"offsets": list(c.offsets), "sizes": list(c.sizes)} for c in entry.chunks],
        }
    regions = []
    for rank_results in results:
        for result in rank_results:
            region: Region = result.storage_data
            index = result.index
            regions.append(
                {
                    "fqn": index.fqn,
                    "offset": None if index.offset is None else list(index.offset),
                    "rank": region.rank,
                    "file": region.file,
                    "at": region.offset,
                    "nbytes": region.nbytes,
                    "xxh3": region.xxh3,
                    "dtype": region.dtype,
                    "sizes": list(region.sizes),
                }
            )
    return {"version": SHARDS_INDEX_VERSION, "tensors": tensors, "regions": regions}


def _ints(value: object, what: str) -> list[int]:
    if not isinstance(value, list) or not all(
        type(v) is int and v >= 0
        for v in value  # bool is not a size
    ):
        raise ValueError(f"{what} is not a list of non-negative ints")
    return value


def metadata_from_json(raw: object, files: dict[str, int]) -> Metadata:
    """DCP's metadata back from :func:`metadata_to_json`'s form, checked: dtypes from the
    allow-list, sizes that match, every region inside a file of ``files`` (name: size).
    Raises ``ValueError`` saying what is wrong."""
    if not isinstance(raw, dict) or raw.get("version") != SHARDS_INDEX_VERSION:
        raise ValueError("not a shards index of a version this library reads")
    tensors, regions = raw.get("tensors"), raw.get("regions")
    if not isinstance(tensors, dict) or not isinstance(regions, list):
        raise ValueError("tensors or regions missing")
    state: dict[str, Any] = {}
    for fqn, entry in tensors.items():
        dtype = TORCH_DTYPES.get(str(entry.get("dtype"))) if isinstance(entry, dict) else None
        if dtype is None or not isinstance(entry.get("chunks"), list):
            raise ValueError(f"{fqn}: unknown dtype")
        chunks = [
            ChunkStorageMetadata(
                offsets=torch.Size(_ints(c.get("offsets"), fqn)),
                sizes=torch.Size(_ints(c.get("sizes"), fqn)),
            )
            for c in entry["chunks"]
        ]
        properties = TensorProperties(dtype=dtype, requires_grad=entry.get("requires_grad") is True)
        state[fqn] = TensorStorageMetadata(
            properties, torch.Size(_ints(entry["size"], fqn)), chunks
        )
    storage: dict[MetadataIndex, Region] = {}
    for entry in regions:
        if not isinstance(entry, dict):
            raise ValueError("a region is not an object")
        fqn, offset = entry.get("fqn"), entry.get("offset")
        dtype_name = entry.get("dtype")
        if fqn not in state or dtype_name not in TORCH_DTYPES:
            raise ValueError(f"a region of an unknown tensor or dtype: {fqn!r}")
        sizes = tuple(_ints(entry.get("sizes"), fqn))
        at, nbytes, rank = _ints([entry.get(k) for k in ("at", "nbytes", "rank")], fqn)
        name = str(entry.get("file"))
        if name not in files or at + nbytes > files[name]:
            raise ValueError(f"{fqn}: its region lies outside the files of the step")
        itemsize = torch.empty(0, dtype=TORCH_DTYPES[dtype_name]).element_size()
        count = 1
        for size in sizes:
            count *= size
        if count * itemsize != nbytes or not isinstance(entry.get("xxh3"), str):
            raise ValueError(f"{fqn}: a region's size does not match its shape")
        index = MetadataIndex(fqn, None if offset is None else torch.Size(_ints(offset, fqn)))
        storage[index] = Region(name, rank, at, nbytes, entry["xxh3"], dtype_name, sizes)
    return Metadata(state_dict_metadata=state, storage_data=storage)


@dataclass(eq=False)
class RankReader(StorageReader):
    """One rank's reader of one item of a committed step (see the module docstring).
    ``signed``: each file read from is checked whole against its SHA-256."""

    step_dir: Path
    manifest: Manifest
    metadata: Metadata
    _: KW_ONLY
    verify: bool
    signed: bool

    @property
    def step(self) -> int:
        return self.manifest.step

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        pass

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        return self.metadata

    def set_up_storage_reader(
        self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any
    ) -> None:
        pass

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        return plans

    def _region(
        self, region: Region, fds: dict[str, int], into: torch.Tensor | None
    ) -> torch.Tensor:
        """The stored chunk, read (into ``into``'s memory when given: a contiguous CPU tensor
        of its dtype and size) and checked against its xxh3 before it is used."""
        path = self.step_dir / region.file
        if region.file not in fds:
            if self.signed:
                check_file(path, self.manifest.files[region.file], self.step, signed=True)
            fds[region.file] = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        data = torch.empty(region.nbytes, dtype=torch.uint8) if into is None else into
        view = data.reshape(-1).view(torch.uint8).numpy().data
        done = 0
        while done < region.nbytes:
            got = os.preadv(fds[region.file], [view[done:]], region.offset + done)
            if got == 0:
                raise corrupt_file(path, self.step, f"truncated (written by rank {region.rank})")
            done += got
        if self.verify and xxhash.xxh3_64_hexdigest(view) != region.xxh3:
            raise corrupt_file(
                path,
                self.step,
                f"checksum mismatch in the shard of bytes {region.offset}..."
                f"{region.offset + region.nbytes} (written by rank {region.rank})",
            )
        return data.view(TORCH_DTYPES[region.dtype]).reshape(region.sizes)

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        """Each region once, in file order: straight into the target when one read takes
        the whole of it into contiguous CPU memory (the layout saved is the layout now),
        else into a buffer kept until its last read."""
        storage: dict[MetadataIndex, Region] = self.metadata.storage_data
        items = sorted(plan.items, key=lambda i: _place(storage[i.storage_index]))
        uses = Counter(storage[i.storage_index] for i in items)
        read: dict[Region, torch.Tensor] = {}
        fds: dict[str, int] = {}
        try:
            for read_item in items:
                if read_item.type == LoadItemType.BYTE_IO:
                    raise CheckpointError(f"{read_item.storage_index.fqn}: not stored as shards")
                region = storage[read_item.storage_index]
                target = planner.resolve_tensor(read_item).detach()
                if uses[region] == 1 and _whole(read_item, region, target):
                    self._region(region, fds, target)
                else:
                    if region not in read:
                        read[region] = self._region(region, fds, None)
                    source = narrow_tensor_by_index(
                        read[region], read_item.storage_offsets, read_item.lengths
                    )
                    target.copy_(source)
                    uses[region] -= 1
                    if not uses[region]:
                        del read[region]  # its last read: the memory goes back
                planner.commit_tensor(read_item, target)
        finally:
            for fd in fds.values():
                os.close(fd)
        future: Future[None] = Future()
        future.set_result(None)
        return future

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return False


def _place(region: Region) -> tuple[str, int]:
    return (region.file, region.offset)


def _whole(read_item: ReadItem, region: Region, target: torch.Tensor) -> bool:
    """Whether ``read_item`` takes the whole region into ``target``, contiguous CPU memory
    of the region's dtype and shape (it can then be read in place)."""
    return (
        not any(read_item.storage_offsets)
        and tuple(read_item.lengths) == region.sizes
        and tuple(target.shape) == region.sizes
        and target.device.type == "cpu"
        and target.is_contiguous()
        and _DTYPE_NAMES.get(target.dtype) == region.dtype
    )


def regions_by_file(results: Sequence[Sequence[WriteResult]]) -> dict[str, Region]:
    """One region of each file written (it carries the file's size and xxh3)."""
    files: dict[str, Region] = {}
    for rank_results in results:
        for result in rank_results:
            region: Region = result.storage_data
            files.setdefault(region.file, region)
    return files
