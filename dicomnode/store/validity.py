"""Whole or refused: the one check, for C-STORE and STOW-RS alike, that an instance is whole and in its encoding.

A 0x0000 (a STOW-RS 200) tells the sender it may forget the instance. Before anything of it is kept, the
dataset as received is walked element by element, values skipped by a seek and never decoded, and refused
(0xC210) unless

- it parses strictly in the encoding of its transfer syntax (explicit or implicit VR, little or big endian).
  pydicom reads a body in the other VR encoding (its first element says which) and
  guesses at a VR that is none; either is a refusal here, whatever pydicom's reading settings are at the
  time (they are process-wide: another thread may be reading leniently);
- every element is whole: no value runs past its item or the dataset, every undefined length (a sequence,
  an item, encapsulated pixel data; nothing else may have one, PS3.5 7.1.2) ends in its delimiter, and the
  dataset ends where its last element ends;
- its pixel data is as long as its attributes say: native Pixel Data, Float and Double Float Pixel Data
  hold at least Rows x Columns x Samples per Pixel x Number of Frames x Bits Allocated / 8 bytes (1-bit
  images packed; YBR_FULL_422 subsampled; rounded up to even, PS3.5 8.1.1 and 8.2); encapsulated pixel
  data (PS3.5 A.4) starts with its Basic Offset Table item, whose offsets (where it has any) point at the
  fragments, one per frame, holds a fragment item for every frame (video: one or more in all), each whole,
  and ends with its sequence delimiter. Pixel data that its attributes do not describe (no Rows, Columns
  or Bits Allocated) is 0xA900, the dataset does not match its SOP class (PS3.4 B.2.3).

Items of an explicit VR sequence are explicit VR as well; only a UN sequence of undefined length holds
implicit VR little endian items (PS3.5 6.2.2), recognised as pydicom recognises them.

Two doors, one walk: a received file, C-STORE's or a STOW-RS part's (:func:`file_refusal`), and the rest
of a C-STORE file whose elements before its pixel data the data phase walked strictly while the dataset
arrived (:func:`rest_refusal`, :mod:`dicomnode.receive.dataphase.early`): for a 0.5 MB slice whose pixel
data ends the file, that is one element header already in memory and a product of five attributes (a few
microseconds); no file is opened.
"""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

from pydicom.datadict import dictionary_VR
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, MPEGTransferSyntaxes
from pydicom.valuerep import EXPLICIT_VR_LENGTH_16, EXPLICIT_VR_LENGTH_32

from dicomnode.store.ingest import CANNOT_DECODE, DOES_NOT_MATCH_SOP_CLASS, TOO_LARGE

UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA, FLOAT_PIXEL_DATA, DOUBLE_PIXEL_DATA = 0x7FE00010, 0x7FE00008, 0x7FE00009
PIXEL_TAGS = frozenset({PIXEL_DATA, FLOAT_PIXEL_DATA, DOUBLE_PIXEL_DATA})
ROWS, COLUMNS, SAMPLES, FRAMES, BITS, PHOTOMETRIC = (0x00280010, 0x00280011, 0x00280002, 0x00280008, 0x00280100,
                                                     0x00280004)
IMAGE_TAGS = frozenset({ROWS, COLUMNS, SAMPLES, FRAMES, BITS, PHOTOMETRIC})  # what the pixel data's length follows
TRANSFER_SYNTAX = 0x00020010
MAX_DEPTH = 64  # sequences nested deeper are no image's (and would exhaust the stack)
_VR16 = frozenset(str(vr).encode() for vr in EXPLICIT_VR_LENGTH_16)
_VR32 = frozenset(str(vr).encode() for vr in EXPLICIT_VR_LENGTH_32)
_PAGE = 4096
_CHUNK = 4 * 2**20  # a deflated dataset is inflated this much at a time
_VIDEO = frozenset(str(uid) for uid in MPEGTransferSyntaxes)


@dataclass(frozen=True)
class Refusal:
    """Why an instance is refused, with its status: 0xC210, or 0xA900 (module docstring). ``reason`` quotes
    no value of the dataset: it may be logged."""

    status: int
    reason: str


class _Refused(Exception):
    """Raised inside the walk; becomes its :class:`Refusal`."""

    def __init__(self, reason: str, status: int = CANNOT_DECODE) -> None:
        super().__init__(reason)
        self.refusal = Refusal(status, reason)


def file_refusal(path: Path, transfer_syntax: str | None = None, *, size: int | None = None,
                 inflated_limit: int) -> Refusal | None:
    """The refusal of the Part-10 file at ``path`` (preamble, file meta, then the dataset as received), or
    None when it is whole: a C-STORE's (``transfer_syntax`` the negotiated one) or a STOW-RS part's (None:
    its file meta's). ``size``: the file's, where its writer counted it.

    A deflated dataset is inflated into an unnamed file beside ``path``, never into memory, and refused
    with 0xA700 once it inflates beyond ``inflated_limit`` bytes (``max_inflated_mb``)."""
    with open(path, "rb") as received:
        size = os.fstat(received.fileno()).st_size if size is None else size
        source = _Source(size, opener=lambda: received)
        try:
            start, meta_syntax = _dataset_start(source)
        except _Refused as exc:
            return exc.refusal
        transfer_syntax = meta_syntax if transfer_syntax is None else transfer_syntax
        if transfer_syntax == DeflatedExplicitVRLittleEndian:
            received.seek(start)
            return _inflated_refusal(received, path.parent, inflated_limit)
        return _walk(source, start, transfer_syntax)


def rest_refusal(path: Path, size: int, transfer_syntax: str, pixels: int, known: bytes,
                 image: Mapping[int, bytes]) -> Refusal | None:
    """The refusal of the C-STORE file at ``path`` (``size`` bytes) from its first top-level pixel data
    element (at ``pixels``) to its end, or None when it is whole: for a dataset whose elements before it
    were walked already, as strictly (:func:`dicomnode.receive.dataphase.elements.walk`), in a little endian
    ``transfer_syntax``. ``known``: the file's bytes from ``pixels`` on that are in memory; ``image``: the
    raw values of the :data:`IMAGE_TAGS` among the elements walked. The file is opened only for what lies
    beyond ``known`` (the fragments of encapsulated pixel data, elements after the pixel data)."""
    with ExitStack() as files:
        source = _Source(size, known=known, base=pixels, opener=lambda: files.enter_context(open(path, "rb")))
        return _walk(source, pixels, transfer_syntax, image=image, first=False)


def _inflated_refusal(deflated: BinaryIO, folder: Path, limit: int) -> Refusal | None:
    """The refusal of a raw-deflate dataset (PS3.5 A.5), inflated chunk by chunk into an unnamed file."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    with tempfile.TemporaryFile(dir=folder) as inflated:
        size = 0
        try:
            while not inflater.eof and (pending := inflater.unconsumed_tail or deflated.read(_CHUNK)):
                size += inflated.write(inflater.decompress(pending, _CHUNK))
                if size > limit:
                    return Refusal(TOO_LARGE, f"inflated dataset larger than {limit // 2**20} MiB (max_inflated_mb)")
        except zlib.error:
            return Refusal(CANNOT_DECODE, "the deflated dataset does not inflate")
        if not inflater.eof:
            return Refusal(CANNOT_DECODE, "the deflated dataset is cut short")
        return _walk(_Source(size, opener=lambda: inflated), 0, DeflatedExplicitVRLittleEndian)


def _walk(source: _Source, start: int, transfer_syntax: str, *, image: Mapping[int, bytes] | None = None,
          first: bool = True) -> Refusal | None:
    implicit, little = _encoding_of(transfer_syntax)
    walk = _Walk(source, transfer_syntax in _VIDEO, dict(image or {}))
    try:
        if first:
            walk.encoding(start, implicit)
        walk.dataset(start, source.size, implicit, little, depth=0)
    except _Refused as exc:
        return exc.refusal
    return None


@lru_cache(maxsize=64)
def _encoding_of(transfer_syntax: str) -> tuple[bool, bool]:
    """Whether ``transfer_syntax`` is implicit VR, and little endian."""
    try:
        syntax = UID(transfer_syntax)
        return syntax.is_implicit_VR, syntax.is_little_endian
    except ValueError:  # a private transfer syntax pynetdicom accepts: explicit VR little endian, as pydicom reads it
        return False, True


class _Source:
    """A stream's bytes where the walk needs them: ``known`` ones (those at ``base``) from memory, the rest a
    page at a time from the stream ``opener`` opens (once, where it is needed at all)."""

    def __init__(self, size: int, *, opener: Callable[[], BinaryIO], known: bytes = b"", base: int = 0) -> None:
        self.size, self.data, self.base, self.opener = size, known, base, opener
        self.stream: BinaryIO | None = None

    def read(self, pos: int, n: int) -> bytes:
        """Up to ``n`` bytes at ``pos`` (fewer at the end of the stream)."""
        offset = pos - self.base
        if offset < 0 or offset + n > len(self.data):
            if self.stream is None:
                self.stream = self.opener()
            self.stream.seek(pos)
            self.data, self.base, offset = self.stream.read(max(n, _PAGE)), pos, 0
        return self.data[offset:offset + n]


def _dataset_start(source: _Source) -> tuple[int, str]:
    """Where the dataset of a Part-10 stream begins, after the preamble, ``DICM`` and the group 0002
    elements (explicit VR little endian, PS3.10 7.1); and the Transfer Syntax UID among them ("" if none)."""
    if source.read(128, 4) != b"DICM":
        raise _Refused("no DICOM File Meta Information (PS3.10 7.1)")
    walk, pos, transfer_syntax = _Walk(source, False, {}), 132, ""
    while True:
        head = source.read(pos, 4)
        if len(head) < 4 or _tag(head, True) >> 16 != 0x0002:
            return pos, transfer_syntax
        tag, _, length, start = walk.header(pos, source.size, False, True)
        pos = walk.fits(start, length, source.size, "a File Meta Information element")
        if tag == TRANSFER_SYNTAX:
            transfer_syntax = source.read(start, min(length, 64)).rstrip(b"\0 ").decode("ascii", "replace")


def _uppercase(vr: bytes) -> bool:
    """pydicom's test for an explicit VR (``filereader._is_implicit_vr``)."""
    return len(vr) == 2 and 0x40 < vr[0] < 0x5B and 0x40 < vr[1] < 0x5B


def _tag(head: bytes, little: bool) -> int:
    group, element = struct.unpack("<HH" if little else ">HH", head[:4])
    return int(group << 16 | element)


def _dictionary_vr(tag: int) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:  # private, or unknown
        return None


class _Walk:
    """One dataset's walk (module docstring); each method raises :class:`_Refused` at the first fault."""

    def __init__(self, source: _Source, video: bool, image: dict[int, bytes]) -> None:
        self.source, self.video, self.image = source, video, image

    def encoding(self, pos: int, implicit: bool) -> None:
        """Refuse a dataset whose first element is in the other VR encoding (pydicom would switch to it)."""
        head = self.source.read(pos, 6)
        if len(head) == 6 and _uppercase(head[4:6]) == implicit:
            found, expected = ("explicit", "implicit") if implicit else ("implicit", "explicit")
            raise _Refused(f"the dataset is encoded in {found} VR; its transfer syntax says {expected} VR")

    def header(self, pos: int, limit: int, implicit: bool, little: bool) -> tuple[int, bytes | None, int, int]:
        """Tag, VR (None in implicit VR and for items), length and value offset of the element at ``pos``."""
        head = self.source.read(pos, 8)
        if len(head) < 8 or pos + 8 > limit:
            raise _Refused("an element cut short (the dataset ends inside its header)")
        group, element, length = struct.unpack("<HHL" if little else ">HHL", head)
        tag = group << 16 | element
        if implicit or group == 0xFFFE:
            return tag, None, length, pos + 8
        vr = head[4:6]
        if vr in _VR16:
            return tag, vr, struct.unpack("<H" if little else ">H", head[6:])[0], pos + 8
        if vr not in _VR32:
            raise _Refused("an element whose VR is none (pydicom would switch to implicit VR, or guess its length)")
        extra = self.source.read(pos + 8, 4)
        if len(extra) < 4 or pos + 12 > limit:
            raise _Refused("an element cut short (the dataset ends inside its header)")
        return tag, vr, struct.unpack("<L" if little else ">L", extra)[0], pos + 12

    def fits(self, start: int, length: int, limit: int, what: str = "an element") -> int:
        if start + length > limit:
            raise _Refused(f"{what} cut short: its length says {length} bytes, {max(limit - start, 0)} follow"
                           if limit == self.source.size else f"{what} runs past the item that holds it")
        return start + length

    def dataset(self, pos: int, end: int | None, implicit: bool, little: bool, depth: int) -> int:
        """Walk a dataset from ``pos`` to ``end``, or to its item delimiter (``end`` None); where it ends."""
        if depth > MAX_DEPTH:
            raise _Refused(f"sequences nested more than {MAX_DEPTH} deep")
        limit = self.source.size if end is None else end
        while end is None or pos < end:
            tag, vr, length, start = self.header(pos, limit, implicit, little)
            if tag == ITEM_END and end is None:
                if length:
                    raise _Refused("an item delimiter with a length")
                return start
            if tag >> 16 == 0xFFFE:
                raise _Refused("an item or delimiter where an element belongs")
            if depth == 0 and tag in PIXEL_TAGS:
                pos = self.pixels(tag, length, start, little)
            elif length == UNDEFINED:
                pos = self.undefined(tag, vr, start, implicit, little, depth)
            else:
                pos = self.fits(start, length, limit)
                if vr == b"SQ" or (vr is None and _dictionary_vr(tag) == "SQ"):
                    self.sequence(start, pos, implicit, little, depth, un=False)
                elif depth == 0 and tag in IMAGE_TAGS and tag not in self.image:
                    self.image[tag] = self.source.read(start, min(length, 64))
        return pos

    def undefined(self, tag: int, vr: bytes | None, start: int, implicit: bool, little: bool, depth: int) -> int:
        """The end of an element of undefined length: a sequence, or encapsulated pixel data (PS3.5 7.1.2)."""
        if vr == b"UN":  # PS3.5 6.2.2: a sequence, its items in implicit VR little endian
            return self.sequence(start, None, True, True, depth, un=True)
        if tag in PIXEL_TAGS and vr in (None, b"OB", b"OW"):
            return self.fragments(start, little)[0]
        if vr == b"SQ" or (vr is None and _dictionary_vr(tag) == "SQ"):
            return self.sequence(start, None, implicit, little, depth, un=False)
        if vr is None and _dictionary_vr(tag) is None:  # a private sequence, known by its first item (as pydicom)
            head = self.source.read(start, 4)
            if len(head) == 4 and _tag(head, little) in (ITEM, SEQUENCE_END):
                return self.sequence(start, None, implicit, little, depth, un=False)
        raise _Refused("an undefined length on an element that is neither a sequence nor encapsulated pixel data")

    def item_header(self, pos: int, limit: int, little: bool) -> tuple[int, int, int]:
        head = self.source.read(pos, 8)
        if len(head) < 8 or pos + 8 > limit:
            raise _Refused("a sequence cut short (no sequence delimiter)")
        group, element, length = struct.unpack("<HHL" if little else ">HHL", head)
        return group << 16 | element, length, pos + 8

    def sequence(self, pos: int, end: int | None, implicit: bool, little: bool, depth: int, *, un: bool) -> int:
        """Walk a sequence's items from ``pos`` to ``end``, or to its delimiter (``end`` None); where it ends."""
        limit = self.source.size if end is None else end
        while end is None or pos < end:
            tag, length, start = self.item_header(pos, limit, little)
            if tag == SEQUENCE_END and end is None:
                if length:
                    raise _Refused("a sequence delimiter with a length")
                return start
            if tag != ITEM:
                raise _Refused("a sequence holding something other than items")
            item_implicit = implicit or (un and not _uppercase(self.source.read(start + 4, 2)))
            if length == UNDEFINED:
                pos = self.dataset(start, None, item_implicit, little, depth + 1)
            else:
                pos = self.fits(start, length, limit, "an item")
                if self.dataset(start, pos, item_implicit, little, depth + 1) != pos:
                    raise _Refused("an item's elements run past its length")
        return pos

    def fragments(self, pos: int, little: bool) -> tuple[int, list[int], bytes]:
        """Encapsulated pixel data's items from ``pos`` (PS3.5 A.4): where they end, where each fragment item
        begins (relative to the first), and the Basic Offset Table."""
        size = self.source.size
        tag, length, start = self.item_header(pos, size, little)
        if tag != ITEM or length == UNDEFINED or length % 4:
            raise _Refused("encapsulated pixel data without its Basic Offset Table item")
        pos = self.fits(start, length, size, "the Basic Offset Table")
        table, first = self.source.read(start, length), pos
        starts: list[int] = []
        while True:
            if pos + 8 > size:
                raise _Refused("encapsulated pixel data without its sequence delimiter" if pos == size
                               else "encapsulated pixel data cut short")
            tag, length, start = self.item_header(pos, size, little)
            if tag == SEQUENCE_END:
                if length:
                    raise _Refused("a sequence delimiter with a length")
                return start, starts, table
            if tag != ITEM or length == UNDEFINED:
                raise _Refused("encapsulated pixel data holding something other than fragment items")
            starts.append(pos - first)
            pos = self.fits(start, length, size, "a pixel data fragment")

    def pixels(self, tag: int, length: int, start: int, little: bool) -> int:
        """The end of the top-level pixel data element at ``start``, once it is found as long as the image
        attributes say (module docstring)."""
        frames = self.number(FRAMES) or 1
        if length == UNDEFINED:
            end, starts, table = self.fragments(start, little)
            if not starts or (not self.video and len(starts) < frames):
                raise _Refused(f"encapsulated pixel data of {len(starts)} fragments for {frames} frames")
            offsets = struct.unpack(f"{'<' if little else '>'}{len(table) // 4}L", table)
            if offsets and (len(offsets) != frames or not set(offsets) <= set(starts)
                            or list(offsets) != sorted(offsets)):
                raise _Refused("the Basic Offset Table does not point at the frames' fragments")
            return end
        end = self.fits(start, length, self.source.size, "the pixel data")
        expected = self.expected(tag, frames, little)
        if length < expected:
            raise _Refused(f"pixel data of {length} bytes; its attributes say {expected}")
        return end

    def expected(self, tag: int, frames: int, little: bool) -> int:
        """The native pixel data's length in bytes, as its attributes say (module docstring)."""
        rows, columns = self.unsigned(ROWS, little), self.unsigned(COLUMNS, little)
        bits = self.unsigned(BITS, little) or {FLOAT_PIXEL_DATA: 32, DOUBLE_PIXEL_DATA: 64}.get(tag)
        if not rows or not columns or not bits:
            raise _Refused("pixel data without the Rows, Columns and Bits Allocated that describe it",
                           DOES_NOT_MATCH_SOP_CLASS)
        samples = self.unsigned(SAMPLES, little) or 1
        count = rows * columns * samples * frames
        if samples == 3 and self.image.get(PHOTOMETRIC, b"").strip(b"\0 ") == b"YBR_FULL_422":
            count = count // 3 * 2  # PS3.3 C.7.6.3.1.2: two of every three chroma values are not sent
        size = (count * bits + 7) // 8
        return size + size % 2

    def unsigned(self, tag: int, little: bool) -> int | None:
        raw = self.image.get(tag)
        return struct.unpack("<H" if little else ">H", raw[:2])[0] if raw is not None and len(raw) >= 2 else None

    def number(self, tag: int) -> int | None:
        """An IS value, or None where there is none, or it is not a number."""
        text = self.image.get(tag, b"").strip(b"\0 ")
        return int(text) if text.isdigit() else None
