"""A C-STORE dataset's header, parsed while the rest of the dataset still arrives.

The node parses every received dataset with pydicom before it keeps it (:func:`dicomnode.store.ingest.
read_meta`); for a 0.5 MB CT slice that is most of a millisecond, and on one association it used to
start only once the last fragment was in. The node's data phase (:mod:`dicomnode.receive.native`)
instead parses the first :data:`PREFIX_BYTES` of the dataset, from memory, as soon as they have
arrived and while the peer sends the rest. The parse counts only when it stops exactly at a pixel data
element inside that prefix (``stop_before_pixels``): it then holds every element before the pixel
data, as the parse of the whole file would. Once the file is complete, :func:`finish` parses the rest
of it, from the pixel data element to its end, with the same reader and options, so that a dataset
that would not decode as a whole is refused just the same. A prefix that ends before the pixel data,
a deflated dataset (compressed as a whole) or a big endian one: no early parse, the whole file is
parsed at the end as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pydicom.filereader import read_dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from dicomnode.store.index import InstanceMeta
from dicomnode.store.ingest import read_meta

PREFIX_BYTES = 64 * 1024
DEFER_BYTES = 64 * 1024  # values longer than this (pixel data) are skipped by a seek, never read
_PIXEL_TAGS = (b"\xe0\x7f\x10\x00", b"\xe0\x7f\x08\x00", b"\xe0\x7f\x09\x00")  # little endian (7FE0,0010/8/9)


@dataclass(frozen=True)
class EarlyHeader:
    """What the parse of a prefix found: the pixel data element's offset in the file, and the header's
    :class:`InstanceMeta`, or the ValueError that reading it raised (raised again by :func:`finish`)."""

    offset: int
    implicit_vr: bool
    meta: InstanceMeta | None
    error: ValueError | None


def eligible(transfer_syntax: str) -> bool:
    """Whether a dataset in ``transfer_syntax`` can be parsed from a prefix (little endian, not deflated)."""
    return transfer_syntax not in (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian)


def parse_prefix(file_meta: bytes, prefix: bytes | bytearray, transfer_syntax: str) -> EarlyHeader | None:
    """Parse the file's first bytes (``file_meta``: preamble and file meta; ``prefix``: the dataset so
    far); None unless the parse stopped at a pixel data element within them."""
    data = file_meta + prefix
    buffer = BytesIO(data)
    try:
        ds = dcmread(buffer, defer_size=DEFER_BYTES, stop_before_pixels=True)
    except Exception:  # the parse of the whole file at the end decides, and refuses
        return None
    offset = buffer.tell()
    if bytes(data[offset:offset + 4]) not in _PIXEL_TAGS:
        return None  # the prefix ended first: the header read so far may be cut short
    implicit = transfer_syntax == ImplicitVRLittleEndian
    try:
        return EarlyHeader(offset, implicit, read_meta(ds, transfer_syntax), None)
    except ValueError as exc:
        return EarlyHeader(offset, implicit, None, exc)


def finish(path: Path, early: EarlyHeader) -> InstanceMeta:
    """The instance's meta, once the rest of the file (pixel data element onwards) parses as the whole
    file would; raises what that parse raises, or the header's ValueError."""
    with open(path, "rb") as received:
        received.seek(early.offset)
        read_dataset(received, early.implicit_vr, True, defer_size=DEFER_BYTES)
    if early.error is not None:
        raise early.error
    assert early.meta is not None
    return early.meta
