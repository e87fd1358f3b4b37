"""The header walk (dicomnode.receive.dataphase.elements) reads a header's structure exactly as pydicom reads it,
or gives up: on clean headers with sequences, character sets and both VR encodings, and on a seeded
sample of damaged ones, every header it reads gives the meta (or the error) of pydicom's whole-file parse."""

from __future__ import annotations

import random
import warnings
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import config, dcmread, dcmwrite
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from dicomnode.receive.dataphase import early
from dicomnode.receive.dataphase.elements import walk
from dicomnode.receive.dataphase.native import _file_meta
from dicomnode.store.index import InstanceMeta
from dicomnode.store.ingest import META_KEYWORDS, read_meta
from dicomnode.store.part10 import DEFER_BYTES
from tests.support.synthetic import make_series

EXPLICIT, IMPLICIT = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"
META_TAGS = early._META_TAGS


def _item(number: int, *, undefined: bool, nested: bool = False) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    item.ReferencedSOPInstanceUID = f"1.2.3.{number}"
    if nested:
        item.PurposeOfReferenceCodeSequence = Sequence([_code()])
        item["PurposeOfReferenceCodeSequence"].is_undefined_length = True
        item.PurposeOfReferenceCodeSequence[0].is_undefined_length_sequence_item = True
    item.is_undefined_length_sequence_item = undefined
    return item


def _code() -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "121311", "DCM", "Localizer"
    return code


def _header(variant: int) -> Dataset:
    """A 64x64 MR slice with sequences (defined and undefined lengths, nested) and a character set."""
    ds = make_series(n_slices=1, rows=64, columns=64)[0]
    ds.ReferencedImageSequence = Sequence([_item(1, undefined=True, nested=True), _item(2, undefined=False),
                                           _item(3, undefined=True)])
    ds["ReferencedImageSequence"].is_undefined_length = variant % 2 == 0
    ds.ProcedureCodeSequence = Sequence([_code()])  # defined length: pydicom keeps its bytes unparsed
    if variant % 3 == 1:
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName = "Müller^Jürgen"
    elif variant % 3 == 2:
        ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
        ds.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    return ds


def _encoded(ds: Dataset, syntax: str) -> bytes:
    buffer = BytesIO()
    with config.disable_value_validation():
        dcmwrite(buffer, Dataset(ds), implicit_vr=syntax == IMPLICIT, little_endian=True)
    return buffer.getvalue()


def _whole_file(tmp_path: Path, meta: bytes, data: bytes, syntax: str) -> InstanceMeta | str:
    """What the node made of the file before the walk: pydicom's parse of all of it."""
    path = tmp_path / "whole.dcm"
    path.write_bytes(meta + data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns, and reads on
        try:
            ds = dcmread(path, defer_size=DEFER_BYTES)
        except Exception:
            return "the file does not parse"
        try:
            return read_meta(ds, syntax)
        except ValueError as exc:
            return str(exc)


def _walked(tmp_path: Path, meta: bytes, data: bytes, syntax: str) -> InstanceMeta | str | None:
    """What the walk makes of the file (None: it gave up), completed as the data phase completes it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        walked = walk(data[:early.PREFIX_BYTES], syntax == IMPLICIT, META_TAGS)
        if walked is None:
            return None
        parsed = early.parse_prefix(meta, data[:early.PREFIX_BYTES], syntax)
        assert parsed is not None and parsed.offset == len(meta) + walked.pixels
        path = tmp_path / "walked.dcm"
        path.write_bytes(meta + data)
        try:
            return early.finish(path, parsed, len(meta) + len(data))
        except ValueError as exc:
            return str(exc)
        except Exception:
            return "the file does not parse"


@pytest.mark.parametrize("syntax", [EXPLICIT, IMPLICIT])
@pytest.mark.parametrize("variant", range(6))
def test_the_walk_reads_clean_headers_as_pydicom(tmp_path: Path, syntax: str, variant: int) -> None:
    ds = _header(variant)
    meta, data = _file_meta(str(ds.SOPClassUID), str(ds.SOPInstanceUID), syntax), _encoded(ds, syntax)
    walked = _walked(tmp_path, meta, data, syntax)
    assert walked is not None, "a clean header must not need pydicom's parse"
    assert walked == _whole_file(tmp_path, meta, data, syntax)
    assert isinstance(walked, InstanceMeta) and walked.patient_name == str(ds.PatientName)


def test_the_walk_gives_up_where_pydicom_would_guess() -> None:
    ds = _header(0)
    data = _encoded(ds, EXPLICIT)
    assert walk(data, True, META_TAGS) is None  # explicit VR bytes sent as implicit: pydicom switches
    assert walk(_encoded(ds, IMPLICIT), False, META_TAGS) is None  # and the other way round
    assert walk(data[:200], False, META_TAGS) is None  # ends before the pixel data
    unknown_vr = data.replace(b"UI", b"QQ", 1)
    assert walk(unknown_vr, False, META_TAGS) is None
    # a kept element sent as a sequence of undefined length: pydicom would hand read_meta the sequence
    name_as_sequence = (b"\x10\x00\x10\x00SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
                        + b"\xe0\x7f\x10\x00OW\x00\x00\x02\x00\x00\x00\x00\x00")
    assert walk(name_as_sequence, False, META_TAGS) is None
    assert walk(name_as_sequence.replace(b"\x10\x00\x10\x00SQ", b"\x10\x00\x11\x00SQ"), False, META_TAGS) is not None


def test_read_meta_reads_only_the_keywords_the_walk_keeps() -> None:
    read: list[str] = []

    class Recording(Dataset):
        def get(self, key, default=None):  # type: ignore[no-untyped-def, override]
            read.append(key)
            return super().get(key, default)

    read_meta(Recording(make_series(n_slices=1)[0]), EXPLICIT)
    assert read and set(read) <= set(META_KEYWORDS)


def _damaged(data: bytes, header_end: int, rng: random.Random) -> bytes:
    damaged = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(header_end)
        kind = rng.random()
        if kind < 0.6:
            damaged[at] = rng.randrange(256)
        elif kind < 0.8:
            del damaged[at]
        else:
            damaged.insert(at, rng.randrange(256))
    return bytes(damaged)


@pytest.mark.parametrize("syntax", [EXPLICIT, IMPLICIT])
def test_every_damaged_header_the_walk_reads_is_read_as_pydicom_reads_it(tmp_path: Path, syntax: str) -> None:
    rng = random.Random(20261126)
    read = 0
    for case in range(300):
        ds = _header(case)
        meta, data = _file_meta(str(ds.SOPClassUID), str(ds.SOPInstanceUID), syntax), _encoded(ds, syntax)
        header_end = data.index(b"\xe0\x7f\x10\x00")
        damaged = _damaged(data, header_end, rng)
        walked = _walked(tmp_path, meta, damaged, syntax)
        if walked is None:
            continue
        read += 1
        assert walked == _whole_file(tmp_path, meta, damaged, syntax), f"case {case}"
    assert read >= 50, "the sample must exercise the walk, not only its giving up"


_VALUE_PARTS = [b"1.2.840.10008.5.1.4.1.1.4", b"1.2.3", b"7", b" 12 ", b"+3", b"007", b"1.5", b"CT", b"MR ",
                b"Doe^Jane", b"A=B", b"", b"\\", b"\x00", b" ", b"\xc3\xa9", b"\x1b$B", b"x/y", b"ABC\x00"]


def _raw_value(rng: random.Random) -> bytes:
    return b"".join(rng.choice(_VALUE_PARTS) for _ in range(rng.randint(0, 3)))


def _outcome(values: object, syntax: str) -> InstanceMeta | str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return read_meta(values, syntax)  # type: ignore[arg-type]
        except ValueError as exc:
            return f"ValueError: {exc}"


def test_values_decoded_without_pydicom_are_pydicoms() -> None:
    """A seeded sample of values, plain and not, under five character sets, in both VR encodings:
    read_meta gets the same from the early header's values as from pydicom's Dataset."""
    rng = random.Random(7)
    plain = 0
    charsets = [None, b"ISO_IR 100", b"ISO_IR 192", b"\\ISO 2022 IR 87", b"ISO_IR 13"]
    for _ in range(1500):
        implicit = rng.random() < 0.5
        found = {}
        for keyword in META_KEYWORDS:
            if rng.random() < 0.1:
                continue
            tag = BaseTag(tag_for_keyword(keyword) or 0)
            vr = dictionary_VR(tag) if rng.random() < 0.9 else rng.choice(["LO", "UN", "DS", "SH"])
            value = _raw_value(rng)
            found[tag] = RawDataElement(tag, None if implicit else vr, len(value), value, 0, implicit, True)
        charset = rng.choice(charsets)
        if charset is not None:
            found[BaseTag(0x00080005)] = RawDataElement(BaseTag(0x00080005), None if implicit else "CS",
                                                        len(charset), charset, 0, implicit, True)
        plain += sum(early._plain(raw) is not None for tag, raw in found.items() if tag != 0x00080005)
        ours = _outcome(early._Values(dict(found)), EXPLICIT)
        assert ours == _outcome(Dataset(dict(found)), EXPLICIT), found
    assert plain >= 3000, "the sample must exercise the values decoded without pydicom"
