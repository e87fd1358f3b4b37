"""Bounded inflation of deflated datasets."""

from __future__ import annotations

import math
import random
import tracemalloc
import zlib
from pathlib import Path

import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pynetdicom.dsutils import split_dataset

from dicomnode.admin.rule_tester import file_headers
from dicomnode.store.completion import HeaderCache
from dicomnode.store.landing import Arrival, _size_refusal
from dicomnode.store.part10 import InflationLimit, inflate_bounded, read_to_pixels
from tests.conftest import make_settings
from tests.support.synthetic import make_series, write_series


def deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


DATA = random.Random(12).randbytes(5000) + bytes(200_000)


@pytest.mark.parametrize("chunk", [1000, 4096, 2**20])
def test_size_is_measured_exactly_up_to_the_limit(chunk: int) -> None:
    assert inflate_bounded(deflate(DATA), len(DATA), chunk_bytes=chunk) == len(DATA)


@pytest.mark.parametrize("chunk", [1000, 4096, 2**20])
def test_one_byte_over_the_limit_is_refused(chunk: int) -> None:
    with pytest.raises(InflationLimit, match="max_inflated_mb"):
        inflate_bounded(deflate(DATA), len(DATA) - 1, chunk_bytes=chunk)


def test_not_deflate_raises_zlib_error() -> None:
    with pytest.raises(zlib.error):
        inflate_bounded(b"\xff" * 64, 10**6)


def test_the_refusal_names_the_limit_in_mib() -> None:
    with pytest.raises(InflationLimit, match=r"larger than 3 MiB \(max_inflated_mb\)"):
        inflate_bounded(deflate(bytes(4 * 2**20)), 3 * 2**20)


def test_inflation_holds_one_chunk_at_a_time() -> None:
    bomb = deflate(bytes(64 * 2**20))  # 64 MiB of zeros in about 64 KiB
    tracemalloc.start()
    try:
        assert inflate_bounded(bomb, 128 * 2**20, chunk_bytes=2**20) == 64 * 2**20
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.0f} MiB while measuring"


def test_a_truncated_stream_is_measured_as_far_as_it_goes() -> None:
    whole = deflate(DATA)
    size = inflate_bounded(whole[: len(whole) // 2], len(DATA), chunk_bytes=1000)
    assert 0 < size < len(DATA)


def _deflated_file(folder: Path, pixel_bytes: int) -> Path:
    """A Deflated Explicit VR Little Endian Part-10 file whose pixel data inflates to ``pixel_bytes``."""
    ds = make_series(n_slices=1, rows=8, columns=8)[0]
    rows = math.isqrt(pixel_bytes // 2)
    ds.Rows = ds.Columns = rows
    ds.PixelData = bytes(rows * rows * 2)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    path = folder / "deflated.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_the_sweep_reads_a_deflated_header_without_inflating_it_in_memory(tmp_path: Path) -> None:
    # pydicom's reader inflates the whole dataset in memory even with stop_before_pixels (77 MiB at its peak here)
    path = _deflated_file(tmp_path, 32 * 2**20)
    tracemalloc.start()
    try:
        header = HeaderCache(inflated_limit=64 * 2**20).read(1, [(str(path), "sha")])[0]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.0f} MiB reading a header"  # a few 4 MiB chunks
    assert "PixelData" not in header and header.Rows == 4096 and header.Modality == "MR"
    assert header.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert list(tmp_path.iterdir()) == [path]  # the inflated copy is gone


def test_the_sweep_stops_inflating_at_max_inflated_mb(tmp_path: Path) -> None:
    path = _deflated_file(tmp_path, 32 * 2**20)
    with pytest.raises(InflationLimit):
        read_to_pixels(path, 16 * 2**20)
    assert list(tmp_path.iterdir()) == [path]


def test_the_rule_tester_reads_deflated_files_as_the_sweep_does(tmp_path: Path) -> None:
    # the sibling of the sweep's read: CLI `rules test` and the console's upload read arbitrary files
    path = _deflated_file(tmp_path, 32 * 2**20)
    (tmp_path / "notes.txt").write_text("not DICOM")
    tracemalloc.start()
    try:
        headers, skipped = file_headers([tmp_path], 64 * 2**20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.0f} MiB reading a header"
    assert [h.Rows for h in headers] == [4096] and skipped == [tmp_path / "notes.txt"]
    headers, skipped = file_headers([path], 16 * 2**20)  # inflates past the limit: skipped, not read whole
    assert headers == [] and skipped == [path]
    assert sorted(tmp_path.iterdir()) == [path, tmp_path / "notes.txt"]  # no inflated copy left behind


def test_max_instance_mb_bounds_the_dataset_not_its_file_meta(tmp_path: Path) -> None:
    """PS3.10's preamble and file meta are the node's wrapping, not the instance: a file just over
    max_instance_mb whose dataset is within it is taken; one whose dataset is over it is refused."""
    (path,) = write_series(make_series(n_slices=1, rows=64, columns=64), tmp_path)
    size, start = path.stat().st_size, split_dataset(path)[1]
    dataset = size - start
    within = make_settings(tmp_path / "a", max_instance_mb=(dataset + start / 2) / 2**20)
    assert _size_refusal(Arrival("k", path), within) == ""
    over = make_settings(tmp_path / "b", max_instance_mb=(dataset - 1) / 2**20)
    assert _size_refusal(Arrival("k", path), over).startswith("instance of 0 MiB larger than max_instance_mb=")
