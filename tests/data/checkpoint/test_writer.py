"""The background writer (``writer.py``: jobs in order, failures kept and raised with their
type) and the step writer (``step_writer.py``: a list of files written, fsynced and
checksummed, their manifest entries)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import xxhash

from alphatriangle.data import CheckpointError, SaveHandle
from alphatriangle.data.checkpoint.signing import ChunkedDigest
from alphatriangle.data.checkpoint.step_writer import StepFile, write_files
from alphatriangle.data.checkpoint.writer import BackgroundWriter


class _DiskFullError(RuntimeError):
    pass


def test_jobs_run_in_order_and_handles_complete(tmp_path: Path) -> None:
    writer = BackgroundWriter("test-writer")
    ran: list[str] = []
    handles = []
    for step in range(3):
        handle = SaveHandle(step)
        handles.append(handle)
        path = tmp_path / str(step)
        writer.submit(
            lambda s=step, p=path: (ran.append(f"job{s}"), p)[1],
            handle,
            lambda s=step: ran.append(f"cleanup{s}"),
            lambda s=step: ran.append(f"after{s}"),
        )
    writer.wait_idle()
    writer.stop()
    assert ran == [f"{what}{s}" for s in range(3) for what in ("job", "cleanup", "after")]
    assert [h.result(1) for h in handles] == [tmp_path / str(s) for s in range(3)]
    assert writer.finished()


def test_a_failure_reaches_the_handle_every_waiter_and_the_next_save() -> None:
    writer = BackgroundWriter("test-writer")
    release = threading.Event()
    handle = SaveHandle(1)
    after: list[int] = []

    def fail() -> Path:
        release.wait(5)
        raise _DiskFullError("disk full")

    writer.submit(fail, handle, lambda: None, lambda: after.append(1))
    seen: list[BaseException] = []

    def wait() -> None:
        writer.wait_idle()
        try:
            writer.raise_error(clear=False)
        except _DiskFullError as exc:
            seen.append(exc)

    waiters = [threading.Thread(target=wait) for _ in range(2)]
    for thread in waiters:
        thread.start()
    release.set()
    for thread in waiters:
        thread.join(5)
    assert len(seen) == 2 and after == []  # no post-commit work after a failed job
    with pytest.raises(_DiskFullError):
        handle.result(1)
    with pytest.raises(_DiskFullError):
        writer.raise_error(clear=True)  # the next save: raised once, then forgotten
    writer.raise_error(clear=True)
    writer.stop()


def test_a_stopped_writer_refuses_jobs() -> None:
    writer = BackgroundWriter("test-writer")
    writer.stop()
    writer.stop()  # idempotent
    with pytest.raises(CheckpointError, match="stopped"):
        writer.submit(Path, SaveHandle(0), lambda: None, lambda: None)


@pytest.mark.parametrize("size", [10, 3 << 20], ids=["small", "large"])
def test_write_files_returns_their_manifest_entries(tmp_path: Path, size: int) -> None:
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    regions = [(0, 5), (7, 3), (size - 4, 4)]
    file = StepFile("item.data", data, regions=regions)
    entries = write_files(tmp_path, [file, StepFile("item.index.json", b"{}")], signed=True)
    assert (tmp_path / "item.data").read_bytes() == data
    digest = ChunkedDigest(parallel=False)
    digest.update(memoryview(data))
    assert entries["item.data"] == {
        "size": size,
        "xxh3_64": xxhash.xxh3_64_hexdigest(data),
        "sha256_chunked": digest.hexdigest(),
    }
    assert file.region_digests == [xxhash.xxh3_64_hexdigest(data[o : o + n]) for o, n in regions]
    assert entries["item.index.json"]["size"] == 2


def test_write_files_never_overwrites(tmp_path: Path) -> None:
    (tmp_path / "a.data").write_bytes(b"old")
    with pytest.raises(FileExistsError):
        write_files(tmp_path, [StepFile("a.data", b"new")], signed=False)
    assert (tmp_path / "a.data").read_bytes() == b"old"
