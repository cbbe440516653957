"""Verified reading (``_verified_files.py``): a mapped file's checksum pass has begun when
the mapping is handed back, so that the restore's own Python runs beside it."""

from __future__ import annotations

import numpy as np
import xxhash

from alphatriangle.data.checkpoint import _verified_files


def test_a_mapped_pass_runs_while_the_restore_goes_on() -> None:
    """The restore's pass has begun when the file is mapped: the caller's Python (index,
    arrays) no longer delays it by holding the GIL."""
    data = np.random.default_rng(0).integers(0, 255, 1 << 20, dtype=np.uint8)
    arena, hasher = _verified_files._hashing(data, data.nbytes, verify=True, signed=False)
    assert isinstance(hasher, _verified_files._PipelinedHash)
    began = hasher._thread.begun  # read before anything releases the GIL
    assert hasher.hexdigest() == xxhash.xxh3_64_hexdigest(data)
    assert began and arena is data
