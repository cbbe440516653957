"""The manifest (``manifest.py``): built and sealed on save, read and checked strictly on
restore; the same module both ways."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import xxhash
from helpers import committed_step, forge_step, restore_error, set_field

from alphatriangle.data import CheckpointCorruptError, CheckpointManager
from alphatriangle.data.checkpoint.errors import CheckpointSignatureError
from alphatriangle.data.checkpoint.manifest import (
    FORMAT_VERSION,
    build_manifest,
    canonical,
    check_metrics,
    read_manifest,
    seal,
    unseal,
)

KEY = b"k" * 32
FILES = {
    "state.data": {"size": 8, "xxh3_64": "0" * 16, "sha256_chunked": "a" * 64},
    "state.index.json": {"size": 2, "xxh3_64": "1" * 16, "sha256_chunked": "b" * 64},
}


def _write(step_dir: Path, manifest: dict[str, object]) -> None:
    step_dir.mkdir(parents=True, exist_ok=True)
    (step_dir / "manifest.json").write_bytes(seal(canonical(manifest)))


def test_a_built_manifest_reads_back_field_for_field(tmp_path: Path) -> None:
    metrics = {"loss": 0.5, "nan": math.nan, "inf": math.inf}
    built = build_manifest(
        7, wall_time=12.5, metrics=metrics, items=["state"], files=FILES, signing_key=KEY
    )
    _write(tmp_path / "s", built)
    read = read_manifest(tmp_path / "s", 7, signing_key=KEY)
    assert (read.step, read.wall_time, read.items) == (7, 12.5, ("state",))
    assert read.metrics["loss"] == 0.5 and math.isnan(read.metrics["nan"])
    assert read.metrics["inf"] == math.inf
    assert dict(read.files) == FILES
    assert read.raw["format_version"] == FORMAT_VERSION


def test_bytes_read_again_are_not_parsed_again_but_still_checked(tmp_path: Path) -> None:
    built = build_manifest(
        3, wall_time=1.0, metrics={}, items=["state"], files=FILES, signing_key=KEY
    )
    _write(tmp_path / "a", built)
    first = read_manifest(tmp_path / "a", 3, signing_key=KEY)
    assert read_manifest(tmp_path / "a", 3) is first  # the same bytes: parsed once
    with pytest.raises(CheckpointSignatureError, match="does not match"):
        read_manifest(tmp_path / "a", 3, signing_key=b"x" * 32)  # the signature: each time
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # the same bytes in another step's place
    with pytest.raises(CheckpointCorruptError, match="says step 3, but lies in"):
        read_manifest(tmp_path / "b", 4)
    _write(tmp_path / "a", {**built, "wall_time": 2.0})  # other bytes: parsed anew
    assert read_manifest(tmp_path / "a", 3).wall_time == 2.0
    broken = (tmp_path / "a" / "manifest.json").read_bytes().replace(b'"step":3', b'"step":5')
    (tmp_path / "a" / "manifest.json").write_bytes(broken)
    with pytest.raises(CheckpointCorruptError, match="checksum mismatch"):
        read_manifest(tmp_path / "a", 3)


def test_metadata_is_the_callers_own_copy(tmp_path: Path) -> None:
    with CheckpointManager(tmp_path) as manager:
        manager.save(1, {"w": torch.ones(3)}).result()
        given = manager.metadata(1)
        given["files"].clear()
        given["items"].append("other")
        assert manager.metadata(1)["files"] and manager.metadata(1)["items"] == ["state"]
        assert manager.restore(1)["w"].tolist() == [1.0, 1.0, 1.0]


def test_seal_and_unseal() -> None:
    body = canonical({"a": 1, "b": [1, 2]})
    sealed = seal(body)
    assert unseal(sealed)
    assert sealed.endswith(b'"}') and xxhash.xxh3_64_hexdigest(body).encode() in sealed
    assert not unseal(sealed.replace(b'"a":1', b'"a":2'))
    assert not unseal(body)


def test_the_signature_covers_every_field(tmp_path: Path) -> None:
    built = build_manifest(
        1, wall_time=1.0, metrics={}, items=["state"], files=FILES, signing_key=KEY
    )
    _write(tmp_path / "signed", built)
    read_manifest(tmp_path / "signed", 1, signing_key=KEY)
    with pytest.raises(CheckpointSignatureError, match="does not match"):
        read_manifest(tmp_path / "signed", 1, signing_key=b"x" * 32)
    _write(tmp_path / "edited", {**built, "wall_time": 2.0})  # resealed, not re-signed
    with pytest.raises(CheckpointSignatureError, match="does not match"):
        read_manifest(tmp_path / "edited", 1, signing_key=KEY)
    unsigned = build_manifest(1, wall_time=1.0, metrics={}, items=["state"], files=FILES)
    _write(tmp_path / "unsigned", unsigned)
    assert read_manifest(tmp_path / "unsigned", 1).step == 1
    with pytest.raises(CheckpointSignatureError, match="not signed"):
        read_manifest(tmp_path / "unsigned", 1, signing_key=KEY)


def test_a_newer_format_is_refused_naming_the_upgrade(tmp_path: Path) -> None:
    built = build_manifest(1, wall_time=1.0, metrics={}, items=["state"], files=FILES)
    _write(tmp_path / "s", {**built, "format_version": FORMAT_VERSION + 1})
    with pytest.raises(CheckpointCorruptError, match="upgrade"):
        read_manifest(tmp_path / "s", 1)


def test_check_metrics_gives_floats() -> None:
    checked = check_metrics({"a": np.float32(0.5), "b": torch.tensor([2.0]), "c": 3})
    assert checked == {"a": 0.5, "b": 2.0, "c": 3.0}
    assert all(type(v) is float for v in checked.values())
    assert check_metrics(None) == {}
    with pytest.raises(TypeError, match="names must be str"):
        check_metrics({1: 1.0})  # type: ignore[dict-item]


MANIFEST_EDITS = {
    "format_version as a string": (["format_version"], "1", "format_version"),
    "format_version as a bool": (["format_version"], True, "format_version"),
    "step as a string": (["step"], "1", "step"),
    "items not a list": (["items"], "state", "items"),
    "item with a separator": (["items"], ["../state"], "items"),
    "files not an object": (["files"], [], "files"),
    "size as a string": (["files", "state.data", "size"], "48", "size"),
    "negative size": (["files", "state.data", "size"], -1, "size"),
    "checksum not hex": (["files", "state.data", "xxh3_64"], "zz", "xxh3_64"),
    "metric as a list": (["metrics"], {"loss": [1]}, "metric"),
    "wall_time as null": (["wall_time"], None, "wall_time"),
}


@pytest.mark.parametrize("edit", list(MANIFEST_EDITS), ids=list(MANIFEST_EDITS))
def test_malformed_manifest_fields_are_corruption(ckpt_dir: Path, edit: str) -> None:
    path, value, expected = MANIFEST_EDITS[edit]
    step_dir = committed_step(ckpt_dir)
    forge_step(step_dir, manifest=set_field(path, value))
    error = restore_error(ckpt_dir)
    assert error.path == str(step_dir / "manifest.json")
    assert expected in str(error)


def test_a_step_copied_under_another_number_is_refused(ckpt_dir: Path) -> None:
    step_dir = committed_step(ckpt_dir)
    shutil.copytree(step_dir, ckpt_dir / "step_000000007")
    error = restore_error(ckpt_dir, 7)
    assert "says step 1" in str(error) and error.step == 7


@pytest.mark.parametrize(
    ("value", "error"),
    [("1.5", TypeError), (True, TypeError), (1j, TypeError), (10**400, ValueError)],
    ids=["string", "bool", "complex", "huge int"],
)
def test_metrics_accept_real_numbers_only(ckpt_dir: Path, value: object, error: type) -> None:
    with CheckpointManager(ckpt_dir) as manager:
        with pytest.raises(error, match="'loss'"):
            manager.save(0, {"w": torch.ones(1)}, metrics={"loss": value})  # type: ignore[dict-item]
        assert manager.all_steps() == []


def test_metrics_take_numpy_scalars_and_one_element_tensors(ckpt_dir: Path) -> None:
    with CheckpointManager(ckpt_dir) as manager:
        metrics = {"a": np.float32(0.5), "b": torch.tensor(2.0), "c": 3}
        manager.save(0, {"w": torch.ones(1)}, metrics=metrics)  # type: ignore[arg-type]
        manager.wait_until_finished()
        assert manager.metadata(0)["metrics"] == {"a": 0.5, "b": 2.0, "c": 3.0}


def test_non_finite_metrics_read_back_as_floats(ckpt_dir: Path) -> None:
    with CheckpointManager(ckpt_dir) as manager:
        metrics = {"nan": math.nan, "inf": math.inf, "ninf": -math.inf, "x": 1.5}
        manager.save(0, {"w": torch.ones(1)}, metrics=metrics)
        manager.wait_until_finished()
        read = manager.metadata(0)["metrics"]
    assert all(type(v) is float for v in read.values()), read
    assert math.isnan(read["nan"]) and read["inf"] == math.inf and read["ninf"] == -math.inf
    assert min(read.values()) == -math.inf
