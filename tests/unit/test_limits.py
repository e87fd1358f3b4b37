"""Bounded inflation of deflated datasets."""

from __future__ import annotations

import random
import tracemalloc
import zlib

import pytest

from dicomnode.store.part10 import InflationLimit, inflate_bounded


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
