"""Data files as parts: sharing by hard link, reading ranges, mapping side by side, usage."""

from __future__ import annotations

import json
import mmap
import os
from pathlib import Path

import numpy as np
import pytest
import xxhash

from alphatriangle.data.checkpoint import CheckpointCorruptError
from alphatriangle.data.checkpoint._chunks import (
    MAX_PART,
    MIN_PART,
    PART_DIGEST,
    PartedFile,
    listed_parts,
    map_parts,
    part_names,
    part_size,
    parted_problem,
    plan_spans,
    read_parts,
    shareable_parts,
    step_usage,
    write_parts,
)
from alphatriangle.data.checkpoint._fields import HEX_PATTERNS
from alphatriangle.data.checkpoint.signing import FILE_DIGEST

PART = MIN_PART  # the parts of a data file without arrays of their own parts
MIB = 1 << 20


def _data(nbytes: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8).tobytes()


def _parts(directory: Path, entries: dict[str, dict]) -> list[tuple[Path, int]]:
    return [(directory / name, entry["size"]) for name, entry in entries.items()]


def _step(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.mkdir()
    return path


def _check_cover(spans: list[tuple[int, int]], nbytes: int) -> None:
    """The spans cover [0, nbytes) in order, whole pages but the last."""
    assert [start for start, _ in spans] == [0, *np.cumsum([size for _, size in spans[:-1]])]
    assert sum(size for _, size in spans) == nbytes
    assert all(size > 0 and size % 4096 == 0 for _, size in spans[:-1])


def test_part_sizes_follow_the_arrays() -> None:
    assert part_size(8 * MIB - 1) is None  # packed with its neighbours
    assert part_size(8 * MIB) == MIN_PART
    assert part_size(45 * MIB) == MIB  # 1/32 rounded down to a power of two
    assert part_size(64 * MIB) == part_size(10_000 * MIB) == MAX_PART == 2 * MIB

    assert plan_spans(0, []) == []
    assert plan_spans(2 * PART + 5, []) == [(0, PART), (PART, PART), (2 * PART, 5)]

    # small arrays, a 64 MiB + 5 array at 2 MiB, a small one just after it, a 45 MiB one
    big, after, medium = (2 * MIB, 64 * MIB + 5), (66 * MIB + 64, 100), (67 * MIB, 45 * MIB)
    nbytes = medium[0] + medium[1] + 3
    spans = plan_spans(nbytes, [(0, 1000), (1024, 5000), big, after, medium])
    _check_cover(spans, nbytes)
    starts = dict(spans)
    assert [starts[at] for at in range(0, 2 * MIB, PART)] == [PART] * 8
    assert [starts[big[0] + k * MAX_PART] for k in range(32)] == [MAX_PART] * 32
    assert starts[66 * MIB] == 4096  # the big one's last 5 bytes and the small one after
    assert 66 * MIB + 4096 in starts  # packed again up to the medium array
    assert [starts[medium[0] + k * MIB] for k in range(44)] == [MIB] * 44
    assert starts[medium[0] + 44 * MIB] == MIB and starts[medium[0] + 45 * MIB] == 3

    # an array not at a multiple of its part size is packed
    assert plan_spans(20 * MIB, [(4096, 10 * MIB)]) == plan_spans(20 * MIB, [])
    assert part_names("buffer.data", 2) == ["buffer.data.000000", "buffer.data.000001"]


def test_large_arrays_get_their_own_parts_when_written(tmp_path: Path) -> None:
    nbytes = 4 * MIB + 100
    entries = write_parts(
        _step(tmp_path, "a"), "x.data", _data(nbytes), {}, signed=False, arrays=[(0, nbytes)]
    ).entries
    assert [entry["size"] for entry in entries.values()] == [MIN_PART] * 16 + [100]
    entries = write_parts(
        _step(tmp_path, "b"), "x.data", _data(64 * MIB), {}, signed=False, arrays=[(0, 64 * MIB)]
    ).entries
    assert [entry["size"] for entry in entries.values()] == [MAX_PART] * 32


@pytest.mark.parametrize("signed", [False, True])
def test_parts_equal_to_the_previous_steps_are_linked(tmp_path: Path, signed: bool) -> None:
    data = bytearray(_data(3 * PART + 1000))
    first_dir = _step(tmp_path, "a")
    first = write_parts(first_dir, "buffer.data", data, {}, signed=signed)
    assert first.written_bytes == len(data)
    for name, entry in first.entries.items():
        content = (first_dir / name).read_bytes()
        assert entry["xxh3_64"] == xxhash.xxh3_64_hexdigest(content)
        assert entry[PART_DIGEST] == xxhash.xxh3_128_hexdigest(content)
        assert (FILE_DIGEST in entry) == signed

    data[PART + 10] ^= 0xFF  # one changed byte: one part written, the rest linked
    second_dir = _step(tmp_path, "b")
    shareable = shareable_parts(first_dir, first.entries, signed=signed)
    second = write_parts(second_dir, "buffer.data", data, shareable, signed=signed)
    assert second.written_bytes == PART
    names = part_names("buffer.data", 4)
    for index, name in enumerate(names):
        same_inode = (first_dir / name).stat().st_ino == (second_dir / name).stat().st_ino
        assert same_inode == (index != 1)
        assert (second_dir / name).read_bytes() == bytes(data[index * PART : (index + 1) * PART])
        assert second.entries[name]["xxh3_64"] == xxhash.xxh3_64_hexdigest(
            (second_dir / name).read_bytes()
        )
    assert step_usage(second_dir) == (PART, 2 * PART + 1000)
    assert step_usage(first_dir) == (PART, 2 * PART + 1000)


def test_a_part_moved_elsewhere_in_the_file_is_still_shared(tmp_path: Path) -> None:
    old = _data(2 * PART, seed=1)
    first_dir = _step(tmp_path, "a")
    first = write_parts(first_dir, "x.data", old, {}, signed=False)
    new = _data(PART, seed=2) + old  # the old parts, one part further on
    second = write_parts(
        _step(tmp_path, "b"),
        "x.data",
        new,
        shareable_parts(first_dir, first.entries, signed=False),
        signed=False,
    )
    assert second.written_bytes == PART


def test_a_signed_step_shares_by_sha256_only(tmp_path: Path) -> None:
    data = _data(2 * PART)
    first_dir = _step(tmp_path, "a")
    unsigned = write_parts(first_dir, "x.data", data, {}, signed=False)
    assert shareable_parts(first_dir, unsigned.entries, signed=True) == {}
    second = write_parts(
        _step(tmp_path, "b"),
        "x.data",
        data,
        shareable_parts(first_dir, unsigned.entries, signed=True),
        signed=True,
    )
    assert second.written_bytes == len(data)


def test_a_source_that_changed_or_vanished_is_written_instead(tmp_path: Path) -> None:
    data = _data(3 * PART)
    first_dir = _step(tmp_path, "a")
    first = write_parts(first_dir, "x.data", data, {}, signed=False)
    names = part_names("x.data", 3)
    (first_dir / names[0]).unlink()
    (first_dir / names[1]).write_bytes(b"short")
    (first_dir / names[2]).unlink()
    (first_dir / names[2]).symlink_to(tmp_path)
    shareable = shareable_parts(first_dir, first.entries, signed=False)
    second_dir = _step(tmp_path, "b")
    second = write_parts(second_dir, "x.data", data, shareable, signed=False)
    assert second.written_bytes == len(data)
    assert b"".join((second_dir / name).read_bytes() for name in names) == data


def test_reading_ranges_whole_and_mapped(tmp_path: Path) -> None:
    data = _data(3 * PART + 777)
    directory = _step(tmp_path, "a")
    parts = _parts(directory, write_parts(directory, "x.data", data, {}, signed=False).entries)
    reader = PartedFile(parts, step=5)
    rng = np.random.default_rng(0)
    spans = [(0, len(data)), (PART - 3, PART + 9), (len(data) - 1, len(data)), (7, 7)]
    for start, stop in spans + [tuple(sorted(rng.integers(0, len(data), 2))) for _ in range(20)]:
        out = bytearray(stop - start)
        reader.pread(memoryview(out), int(start))
        assert bytes(out) == data[start:stop]
    with pytest.raises(CheckpointCorruptError, match="read past the end"):
        reader.pread(memoryview(bytearray(2)), len(data) - 1)

    whole = np.empty(len(data), dtype=np.uint8)
    read_parts(parts, whole, step=5)
    assert whole.tobytes() == data
    with pytest.raises(ValueError, match="bytes of room"):
        read_parts(parts, np.empty(1, dtype=np.uint8), step=5)

    mapped = map_parts(parts, step=5)
    assert mapped.tobytes() == data and not mapped.flags.owndata
    mapped[:] = 0  # copy-on-write: the parts keep their bytes
    assert map_parts(parts, step=5).tobytes() == data
    assert map_parts([], step=5).size == 0
    # parts that are not whole pages but the last cannot be mapped side by side: read
    swapped = map_parts([parts[-1], parts[0]], step=5)
    assert swapped.tobytes() == data[3 * PART :] + data[:PART]


def test_parts_from_page_aligned_memory_are_written_directly(tmp_path: Path) -> None:
    nbytes = 3 * PART + 1000
    memory = mmap.mmap(-1, 4 * PART)  # page-aligned, whole pages: what staging hands over
    memory[:nbytes] = _data(nbytes)
    padded = memoryview(memory)[: 4 * PART]
    directory = _step(tmp_path, "a")
    written = write_parts(directory, "x.data", padded[:nbytes], {}, signed=False, padded=padded)
    assert written.written_bytes == nbytes
    parts = _parts(directory, written.entries)
    assert [size for _, size in parts] == [PART, PART, PART, 1000]
    assert b"".join(path.read_bytes() for path, _ in parts) == memory[:nbytes]
    for name, entry in written.entries.items():
        assert entry["xxh3_64"] == xxhash.xxh3_64_hexdigest((directory / name).read_bytes())


def test_two_mib_parts_are_mapped_on_two_mib_boundaries(tmp_path: Path) -> None:
    data = _data(32 * MAX_PART + 10)
    directory = _step(tmp_path, "a")
    entries = write_parts(
        directory, "x.data", data, {}, signed=False, arrays=[(0, len(data))]
    ).entries
    assert len(entries) == 33
    for _ in range(3):  # wherever the kernel puts the reserved region
        mapped = map_parts(_parts(directory, entries), step=1)
        assert mapped.ctypes.data % MAX_PART == 0 and mapped.tobytes() == data


def test_parts_out_of_the_page_cache_are_mapped_too(tmp_path: Path) -> None:
    data = _data(4 * PART + 9)
    directory = _step(tmp_path, "a")
    parts = _parts(directory, write_parts(directory, "x.data", data, {}, signed=False).entries)
    for path, _ in parts[1::2]:  # written and fsynced: clean pages the kernel may drop
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    assert map_parts(parts, step=2).tobytes() == data


def test_a_mapping_outlives_the_deleted_step(tmp_path: Path) -> None:
    data = _data(2 * PART + 5)
    directory = _step(tmp_path, "a")
    parts = _parts(directory, write_parts(directory, "x.data", data, {}, signed=False).entries)
    mapped = map_parts(parts, step=1)
    for path, _ in parts:
        path.unlink()
    assert mapped.tobytes() == data


@pytest.mark.parametrize("how", ["map", "read", "range"])
def test_a_damaged_part_is_named(tmp_path: Path, how: str) -> None:
    directory = _step(tmp_path, "a")
    entries = write_parts(directory, "x.data", _data(2 * PART), {}, signed=False).entries
    parts = _parts(directory, entries)
    victim = parts[1][0]

    def load() -> None:
        if how == "map":
            map_parts(parts, step=3)
        elif how == "read":
            read_parts(parts, np.empty(2 * PART, dtype=np.uint8), step=3)
        else:
            PartedFile(parts, step=3).pread(memoryview(bytearray(10)), PART + 5)

    victim.write_bytes(b"short")
    with pytest.raises(CheckpointCorruptError, match="size 5 bytes, manifest says") as caught:
        load()
    assert caught.value.path == str(victim) and caught.value.step == 3
    victim.unlink()
    with pytest.raises(CheckpointCorruptError, match="missing"):
        load()
    victim.symlink_to(parts[0][0])
    with pytest.raises(CheckpointCorruptError, match="symbolic link"):
        load()
    victim.unlink()
    os.mkfifo(victim)
    with pytest.raises(CheckpointCorruptError, match="not a regular file"):
        load()


def test_a_parted_table_must_list_every_part_in_order() -> None:
    digest = "0" * 32
    files = {
        "x.data.000000": {"size": PART, PART_DIGEST: digest},
        "x.data.000001": {"size": 10, PART_DIGEST: digest},
    }
    good = {"x.data": {"size": PART + 10, "parts": 2, "xxh3_64": "0" * 16}}
    assert parted_problem(files, good, HEX_PATTERNS) is None
    assert parted_problem(files, {}, HEX_PATTERNS) is None
    cases = {
        "parted is not an object": [],
        "has no valid size and parts": {"x.data": {"size": True, "parts": 2}},
        "x.data.000001 is not listed with a size in whole pages": {
            "x.data": {"size": PART + 10, "parts": 3}
        },
        "has no valid xxh3_64": {"x.data": {"size": PART + 10, "parts": 2, "xxh3_64": "zz"}},
        "is not the sum of its 2 parts": {"x.data": {"size": PART + 11, "parts": 2}},
        "is not listed with": {"y.data": {"size": 5, "parts": 1}},
    }
    for why, parted in cases.items():
        problem = parted_problem(files, parted, HEX_PATTERNS)
        assert problem is not None and why in problem, (why, problem)
    bad_digest = {**files, "x.data.000001": {"size": 10, PART_DIGEST: "nothex"}}
    assert "no valid xxh3_128" in str(parted_problem(bad_digest, good, HEX_PATTERNS))
    ragged = {**files, "x.data.000000": {"size": PART - 1, PART_DIGEST: digest}}
    ragged_table = {"x.data": {"size": PART + 9, "parts": 2}}
    assert "in whole pages" in str(parted_problem(ragged, ragged_table, HEX_PATTERNS))
    both = {**files, "x.data": {"size": 1}}
    assert "both whole and in parts" in str(parted_problem(both, good, HEX_PATTERNS))


def test_listed_parts_takes_only_well_formed_names_and_digests(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.json"
    digest = "ab" * 16
    manifest.write_text(
        json.dumps(
            {
                "parted": {"x.data": {}},
                "files": {
                    "x.data.000000": {PART_DIGEST: digest},
                    "x.data.000001": {PART_DIGEST: "../../etc/passwd"},
                    "../x.data.000002": {PART_DIGEST: digest},
                    "x.index.json": {"size": 3},
                },
            }
        )
    )
    assert listed_parts(manifest) == {"x.data.000000": digest}
    manifest.write_text("{not json")
    assert listed_parts(manifest) == {}
    assert listed_parts(tmp_path / "missing.json") == {}
