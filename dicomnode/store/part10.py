"""Reading a received Part-10 file's header, bounded: values over :data:`DEFER_BYTES` stay on disk, and a
deflated dataset is inflated chunk by chunk into a file, never into memory.

- :func:`inflate_bounded` inflates a Deflated Explicit VR Little Endian dataset chunk by chunk, holding
  one chunk at a time, and stops past ``max_inflated_mb`` (0xA700, for C-STORE and STOW-RS alike).
- :func:`open_part10` reads a received file's header that way: a deflated dataset is inflated into an
  unnamed file beside it (the spool's file system), never into memory, as pydicom's reader would. The
  landing (:mod:`dicomnode.store.landing`) reads headers through it.
- :func:`read_to_pixels` is what the completeness sweep routes on: the dataset up to its pixel data, as
  ``dcmread(stop_before_pixels=True)``, but a deflated one inflated the same bounded way.
"""

from __future__ import annotations

import io
import os
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import _at_pixel_data, _read_file_meta_info, read_dataset, read_preamble
from pydicom.uid import DeflatedExplicitVRLittleEndian

DEFER_BYTES = 64 * 1024  # values longer than this (pixel data) are skipped by a seek, never read


class InflationLimit(ValueError):
    """The deflated dataset inflates beyond ``max_inflated_mb``."""


def inflate_bounded(deflated: bytes | BinaryIO, limit_bytes: int, chunk_bytes: int = 4 * 2**20,
                    out: BinaryIO | None = None) -> int:
    """The inflated size of a raw-deflate dataset (PS3.5 A.5), given as bytes or an open file: read and
    inflated in chunks of ``chunk_bytes`` that are dropped at once (written to ``out`` first, when
    given), so that memory stays at a few chunks and inflation stops past ``limit_bytes``.

    Raises
    ------
    InflationLimit
        When the inflated dataset would be larger than ``limit_bytes`` (``out`` then holds a part of it).
    zlib.error
        When the bytes are not a deflate stream.
    """
    source = io.BytesIO(deflated) if isinstance(deflated, bytes) else deflated
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    size = 0
    while not inflater.eof:
        pending = inflater.unconsumed_tail or source.read(chunk_bytes)
        if not pending:
            break
        size += _put(inflater.decompress(pending, chunk_bytes), out)
        _check_inflated(size, limit_bytes)
    size += _put(inflater.flush(), out)
    _check_inflated(size, limit_bytes)
    return size


def _put(inflated: bytes, out: BinaryIO | None) -> int:
    if out is not None:
        out.write(inflated)
    return len(inflated)


@contextmanager
def open_part10(path: Path, inflated_limit: int, defer_size: int) -> Iterator[tuple[Dataset, int]]:
    """The dataset of the Part-10 file at ``path`` (PS3.10 7.1), its file meta as ``file_meta``, with
    every value longer than ``defer_size`` left on disk (pydicom's deferred read: skipped by a seek, its
    offset and length kept); and the size of the file that holds the dataset, so that a value that
    would run past its end can be told. A Deflated Explicit VR Little Endian dataset (PS3.5 A.5) is
    first inflated (:func:`inflate_bounded`) into an unnamed file in ``path``'s folder, removed on exit:
    its deferred values can no longer be read then.

    Raises
    ------
    InflationLimit
        When a deflated dataset inflates beyond ``inflated_limit`` bytes.
    Exception
        Whatever pydicom or zlib raise on bytes that are not a Part-10 file.
    """
    with _dataset_source(path, inflated_limit) as (meta, inflated, size):
        if inflated is None:
            yield dcmread(path, defer_size=defer_size), size
            return
        ds = read_dataset(inflated, is_implicit_VR=False, is_little_endian=True, defer_size=defer_size)
        ds.file_meta = meta
        yield ds, size


@contextmanager
def _dataset_source(path: Path, inflated_limit: int) -> Iterator[tuple[FileMetaDataset, BinaryIO | None, int]]:
    """The file meta of the Part-10 file at ``path``; for a deflated dataset the inflated dataset (an unnamed
    file beside ``path``, removed on exit), else None; and the size of the file that holds the dataset."""
    with open(path, "rb") as fp:
        read_preamble(fp, False)
        meta = _read_file_meta_info(fp)
        if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
            yield meta, None, os.fstat(fp.fileno()).st_size
            return
        with tempfile.TemporaryFile(dir=path.parent) as inflated:
            size = inflate_bounded(fp, inflated_limit, out=inflated)
            inflated.seek(0)
            yield meta, inflated, size


def _check_inflated(size: int, limit_bytes: int) -> None:
    if size > limit_bytes:
        raise InflationLimit(f"inflated dataset larger than {limit_bytes // 2**20} MiB (max_inflated_mb)")


def read_to_pixels(path: Path, inflated_limit: int) -> Dataset:
    """The dataset of the received Part-10 file at ``path`` up to its pixel data, every value read (what
    routing and the usability check read), with ``file_meta``. pydicom inflates a deflated dataset whole,
    in memory, even when asked to stop before the pixels; here it is inflated chunk by chunk into an
    unnamed file beside ``path`` (:func:`inflate_bounded`) and read from there. Raises as :func:`open_part10`.
    """
    with _dataset_source(path, inflated_limit) as (meta, inflated, _):
        if inflated is None:
            return dcmread(path, stop_before_pixels=True, force=True)
        ds = read_dataset(inflated, is_implicit_VR=False, is_little_endian=True, stop_when=_at_pixel_data)
    ds.file_meta = meta
    return ds
