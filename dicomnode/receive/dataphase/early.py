"""A C-STORE dataset's header, parsed while the rest of the dataset still arrives.

The node parses every received dataset before it keeps it (:func:`dicomnode.store.ingest.read_meta`);
with pydicom's reader, for a 0.5 MB CT slice, that was most of a millisecond, and on one association
it started only once the last fragment was in. The node's data phase (:mod:`dicomnode.receive.dataphase.native`)
instead parses the first :data:`PREFIX_BYTES` of the dataset, from memory, as soon as they have
arrived and while the peer sends the rest:

- the header's elements are walked without decoding them (:func:`dicomnode.receive.dataphase.elements.walk`,
  which reads the structure exactly as pydicom's reader does, or gives up), and only the ten values
  that :func:`read_meta` reads are decoded: printable ASCII ones here, any other by pydicom with the
  dataset's character set (:class:`_Values`). About 0.1 ms instead of 0.5;
- where the walk gives up, pydicom's reader parses the prefix, as before.

The parse counts only when it stops exactly at a pixel data element inside that prefix: it then holds
every element before the pixel data, as the parse of the whole file would. Once the file is complete,
:func:`finish` parses the rest of it, from the pixel data element to its end, with pydicom's reader,
so that a dataset that would not decode as a whole is refused just the same; a file that ends where
its pixel data element ends has nothing left to parse. Whether the file is whole and strictly in its
encoding (:mod:`dicomnode.store.validity`) is then judged from the pixel data element on (:func:`refusal`):
the walk read the elements before it as strictly, and kept the image attributes its length follows. A
prefix that ends before the pixel data, a deflated dataset (compressed as a whole) or a big endian one:
no early parse, the whole file is parsed (and judged) at the end as before.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, replace
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    PrivateTransferSyntaxes,
)

from dicomnode.log import lenient_reading
from dicomnode.receive.dataphase.elements import PIXEL_TAGS, walk
from dicomnode.store.index import InstanceMeta
from dicomnode.store.ingest import META_KEYWORDS, Attributes, read_meta
from dicomnode.store.part10 import DEFER_BYTES
from dicomnode.store.validity import IMAGE_TAGS, Refusal, file_refusal, rest_refusal

PREFIX_BYTES = 64 * 1024
_TAG = struct.Struct("<HH")  # little endian group, element
_KEYWORD_TAGS = {keyword: BaseTag(tag_for_keyword(keyword) or 0) for keyword in META_KEYWORDS}
_META_TAGS = frozenset(int(tag) for tag in _KEYWORD_TAGS.values())
_KEPT_TAGS = _META_TAGS | IMAGE_TAGS  # and those the pixel data's length follows (store/validity.py)
_DICTIONARY_VRS = {tag: dictionary_VR(tag) for tag in _KEYWORD_TAGS.values()}  # implicit VR: pydicom's
_PLAIN_VRS = frozenset({"UI", "CS", "SH", "LO", "PN", "IS"})
_PLAIN = re.compile(rb"[\x20-\x5b\x5d-\x7e]*\x00?\Z")  # printable ASCII, no backslash; a UI's NUL pad
_INTEGER = re.compile(r" *[+-]?[0-9]+\Z")


@dataclass(frozen=True)
class EarlyHeader:
    """What the parse of a prefix found: the pixel data element's offset in the file, and the header's
    :class:`InstanceMeta`, or what reading it raised (raised again by :func:`finish`, as the parse of
    the whole file would raise it: a ValueError for a bad UID, anything else for a value that does
    not decode)."""

    offset: int
    implicit_vr: bool
    meta: InstanceMeta | None
    error: Exception | None
    end: int | None = None  # where the pixel data element ends in the file, where the walk found it
    transfer_syntax: str = ""
    image: dict[int, bytes] | None = None  # the walk's image attributes (raw); None: pydicom read the prefix
    known: bytes = b""  # the prefix's bytes from the pixel data element on, where the walk found it


def eligible(transfer_syntax: str) -> bool:
    """Whether a dataset in ``transfer_syntax`` can be parsed from a prefix (little endian, not deflated)."""
    return (transfer_syntax not in (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian)
            and transfer_syntax not in PrivateTransferSyntaxes)  # pydicom's own list: its encoding


def parse_prefix(file_meta: bytes, prefix: bytes | bytearray, transfer_syntax: str) -> EarlyHeader | None:
    """Parse the file's first bytes (``file_meta``: preamble and file meta; ``prefix``: the dataset so
    far); None unless the parse stopped at a pixel data element within them.

    The header's elements are walked (:func:`dicomnode.receive.dataphase.elements.walk`) and only those that
    :func:`read_meta` reads are decoded, by pydicom; where the walk gives up, pydicom's reader parses
    the prefix, as it would the whole file."""
    implicit = transfer_syntax == ImplicitVRLittleEndian
    walked = walk(bytes(prefix), implicit, _KEPT_TAGS)
    if walked is not None:
        start = len(file_meta)
        end = None if walked.end is None else start + walked.end
        header = _header(start + walked.pixels, implicit, _Values(walked.found), transfer_syntax, end)
        image = {int(tag): raw.value for tag, raw in walked.found.items()
                 if tag in IMAGE_TAGS and isinstance(raw, RawDataElement) and raw.value is not None}
        return replace(header, image=image, known=bytes(prefix[walked.pixels:]))
    return _parse(file_meta + prefix, transfer_syntax)


class _Values:
    """The kept elements' values as :func:`read_meta` gets them from pydicom's Dataset. A value of
    printable ASCII without a backslash reads alike in every character set and is decoded here, as
    pydicom decodes it (padding stripped; an IS as its digits); any other goes through pydicom, with
    the dataset's character set. pydicom's conversion of ten values is a third of a millisecond."""

    def __init__(self, found: dict[BaseTag, DataElement | RawDataElement]) -> None:
        self._found = found
        self._dataset: Dataset | None = None

    def get(self, key: str, default: Any = None) -> Any:
        raw = self._found.get(_KEYWORD_TAGS[key])
        if raw is None:
            return default
        value = _plain(raw) if isinstance(raw, RawDataElement) else None
        if value is None:
            if self._dataset is None:
                self._dataset = Dataset(self._found)
            return self._dataset.get(key, default)
        return value


def _plain(raw: RawDataElement) -> str | None:
    """The value, where it is plain (class docstring) and of a VR decoded here; else None."""
    vr = raw.VR or _DICTIONARY_VRS[raw.tag]
    if raw.value is None or vr not in _PLAIN_VRS or not _PLAIN.match(raw.value):
        return None
    text = raw.value.decode("ascii").rstrip("\0 ")
    if vr == "IS" and not _INTEGER.match(text):
        return None
    return text


def _header(offset: int, implicit: bool, ds: Attributes, transfer_syntax: str, end: int | None = None) -> EarlyHeader:
    try:
        with lenient_reading():  # a dirty header's values are decoded here (dicomnode.log)
            return EarlyHeader(offset, implicit, read_meta(ds, transfer_syntax), None, end, transfer_syntax)
    except Exception as exc:  # a bad UID (ValueError), or a value pydicom cannot decode: raised by finish
        return EarlyHeader(offset, implicit, None, exc, end, transfer_syntax)


def _parse(data: bytes | bytearray, transfer_syntax: str) -> EarlyHeader | None:
    """pydicom's parse of the file's first bytes."""
    buffer = BytesIO(data)
    try:
        ds = dcmread(buffer, defer_size=DEFER_BYTES, stop_before_pixels=True)
    except Exception:  # the parse of the whole file at the end decides, and refuses
        return None
    offset = buffer.tell()
    group, element = _TAG.unpack_from(data, offset) if len(data) >= offset + 4 else (0, 0)
    if (group << 16 | element) not in PIXEL_TAGS:
        return None  # the prefix ended first: the header read so far may be cut short
    return _header(offset, transfer_syntax == ImplicitVRLittleEndian, ds, transfer_syntax)


def finish(path: Path, early: EarlyHeader, size: int | None = None) -> InstanceMeta:
    """The instance's meta, once the rest of the file (pixel data element onwards) parses as the whole
    file would; raises what that parse raises, or what reading the header raised.

    A file of ``size`` bytes that ends where its pixel data element ends needs no parse: pydicom reads
    that element's header (walked already) and skips its value, and nothing follows."""
    if size is None or early.end != size:
        with open(path, "rb") as received:
            received.seek(early.offset)
            read_dataset(received, early.implicit_vr, True, defer_size=DEFER_BYTES)
    if early.error is not None:
        raise early.error
    assert early.meta is not None
    return early.meta


def refusal(path: Path, early: EarlyHeader, size: int) -> Refusal | None:
    """Whole or refused (:mod:`dicomnode.store.validity`), once the file of ``size`` bytes is complete: from
    its pixel data on, where the walk read the header before it (as strictly); else the whole file, as
    pydicom's parse of the prefix proves nothing about its encoding."""
    if early.image is None:
        return file_refusal(path, early.transfer_syntax, size=size, inflated_limit=0)  # never deflated (eligible)
    return rest_refusal(path, size, early.transfer_syntax, early.offset, early.known, early.image)
