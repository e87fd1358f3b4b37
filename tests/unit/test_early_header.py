"""A dataset's header parsed from its first bytes (dicomnode.receive.dataphase.early): the same instance meta as
the parse of the whole file, or no early parse at all; the rest of the file still judged."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest
from pydicom import config, dcmread, dcmwrite
from pydicom.dataset import Dataset

from dicomnode.receive.dataphase import early
from dicomnode.receive.dataphase.native import _file_meta
from dicomnode.store.ingest import read_meta
from dicomnode.store.landing import sop_uids
from dicomnode.store.part10 import DEFER_BYTES
from tests.support.synthetic import make_series

EXPLICIT = "1.2.840.10008.1.2.1"


def _encoded(ds: Dataset, *, implicit: bool = False) -> bytes:
    buffer = BytesIO()
    with config.disable_value_validation():
        dcmwrite(buffer, Dataset(ds), implicit_vr=implicit, little_endian=True)
    return buffer.getvalue()


def _file(tmp_path: Path, ds: Dataset, syntax: str = EXPLICIT, *, tail: bytes = b"") -> tuple[bytes, bytes, Path]:
    meta = _file_meta(str(ds.SOPClassUID), str(ds.SOPInstanceUID), syntax)
    data = _encoded(ds, implicit=syntax == "1.2.840.10008.1.2") + tail
    path = tmp_path / "received.dcm"
    path.write_bytes(meta + data)
    return meta, data, path


@pytest.mark.parametrize("syntax", [EXPLICIT, "1.2.840.10008.1.2"])
def test_the_early_header_is_the_whole_files(tmp_path: Path, syntax: str) -> None:
    ds = make_series(n_slices=1, rows=256, columns=256)[0]  # 128 KiB of pixels after a small header
    meta, data, path = _file(tmp_path, ds, syntax)
    parsed = early.parse_prefix(meta, data[:early.PREFIX_BYTES], syntax)
    assert parsed is not None and parsed.error is None
    assert early.finish(path, parsed) == read_meta(dcmread(path, defer_size=DEFER_BYTES), syntax)


def test_a_prefix_ending_inside_the_header_gives_no_early_parse(tmp_path: Path) -> None:
    ds = make_series(n_slices=1, rows=256, columns=256)[0]
    meta, data, _ = _file(tmp_path, ds)
    assert early.parse_prefix(meta, data[:300], EXPLICIT) is None  # pydicom would read a cut-short header


def test_garbage_after_the_pixel_data_is_still_refused_at_the_end(tmp_path: Path) -> None:
    ds = make_series(n_slices=1, rows=256, columns=256)[0]
    meta, data, path = _file(tmp_path, ds, tail=b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + b"\x01" * 16)
    parsed = early.parse_prefix(meta, data[:early.PREFIX_BYTES], EXPLICIT)
    assert parsed is not None
    with pytest.raises(Exception):  # noqa: B017 (whatever pydicom raises for the whole file)
        dcmread(path, defer_size=DEFER_BYTES)
    with pytest.raises(Exception):  # noqa: B017
        early.finish(path, parsed)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")
def test_a_bad_uid_in_the_header_is_raised_once_the_rest_parsed(tmp_path: Path) -> None:
    ds = make_series(n_slices=1, rows=256, columns=256)[0]
    with config.disable_value_validation():
        ds.SeriesInstanceUID = "1.2.bad/../../etc"
    meta, data, path = _file(tmp_path, ds)
    parsed = early.parse_prefix(meta, data[:early.PREFIX_BYTES], EXPLICIT)
    assert parsed is not None and parsed.meta is None
    with pytest.raises(ValueError, match="SeriesInstanceUID"):
        early.finish(path, parsed)


def test_deflated_and_big_endian_datasets_are_parsed_whole_at_the_end() -> None:
    assert not early.eligible("1.2.840.10008.1.2.1.99")
    assert not early.eligible("1.2.840.10008.1.2.2")
    assert early.eligible(EXPLICIT) and early.eligible("1.2.840.10008.1.2.4.50")


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_value_that_does_not_decode_is_raised_once_the_rest_parsed(tmp_path: Path) -> None:
    """Not a ValueError: pydicom cannot decode the value at all; raised by finish, as by the whole file."""
    ds = make_series(n_slices=1, rows=256, columns=256)[0]
    meta, data, path = _file(tmp_path, ds)
    data = data.replace(b"\x08\x00\x16\x00UI", b"\x08\x00\x16\x00QQ", 1)  # SOP Class UID: an unknown VR
    path.write_bytes(meta + data)
    parsed = early.parse_prefix(meta, data[:early.PREFIX_BYTES], EXPLICIT)
    assert parsed is not None and parsed.meta is None
    with pytest.raises(NotImplementedError, match="QQ"):
        read_meta(dcmread(path, defer_size=DEFER_BYTES), EXPLICIT)
    with pytest.raises(NotImplementedError, match="QQ"):
        early.finish(path, parsed, len(meta) + len(data))


def test_a_refusal_names_a_header_s_uids_at_most_64_characters_each() -> None:
    """What a refusal names (a STOW-RS FailedSOPSequence entry, an audit row) is a valid-length UI value even
    when the header's is not (PS3.5 6.2: 64 bytes at most)."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1." * 40 + "1", "2." * 40 + "2"
    named = sop_uids(ds)
    assert named == (("1." * 40 + "1")[:64], ("2." * 40 + "2")[:64]) and {len(u) for u in named} == {64}
    assert sop_uids(Dataset()) == ("", "")
