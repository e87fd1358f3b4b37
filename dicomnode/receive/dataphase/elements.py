"""A little endian dataset's element structure, walked up to its pixel data without decoding it.

The node parses the header of every received dataset (:mod:`dicomnode.receive.dataphase.early`). pydicom's reader
builds an element for each of the header's elements and parses every sequence of undefined length
into datasets; the node keeps ten values. :func:`walk` steps over the same elements, in the same order
and under the same rules, and keeps only the raw elements asked for, which pydicom then decodes
(character set included) exactly as it would have.

The walk is strict where pydicom is lenient: it gives up (None) on anything pydicom would have to
guess about, so that a walk that succeeds has read the structure exactly as pydicom reads it, and a
dataset that pydicom would refuse is never taken. It gives up on

- a VR that is not a standard one (pydicom switches to implicit VR, or guesses a 2-byte length);
- an element or item that runs past the bytes given, or past the item that holds it;
- an undefined length on anything but a sequence (SQ in explicit VR, a dictionary SQ in implicit VR),
  or on an element the caller keeps;
- a sequence whose items are not items, or a delimiter with a length;
- a first element whose VR bytes say the other VR encoding (pydicom would switch to it);
- an item or delimiter tag outside a sequence, or the bytes ending before a pixel data element.

The caller then parses with pydicom, as before.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import cast

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.tag import BaseTag
from pydicom.valuerep import EXPLICIT_VR_LENGTH_16, EXPLICIT_VR_LENGTH_32

_VR16 = frozenset(str(vr).encode() for vr in EXPLICIT_VR_LENGTH_16)
_VR32 = frozenset(str(vr).encode() for vr in EXPLICIT_VR_LENGTH_32)
_TAG_LENGTH = struct.Struct("<HHL")  # also an implicit VR element's header
_SHORT = struct.Struct("<H")
_LONG = struct.Struct("<L")
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})  # where pydicom's stop_before_pixels stops
CHARACTER_SET = 0x00080005


class _GiveUp(Exception):
    """The structure is not one this walk reads exactly as pydicom does."""


@dataclass(frozen=True)
class Walked:
    """Where a dataset's first top-level pixel data element begins (``pixels``) and ends (``end``; None
    for an undefined length), and the raw elements kept before it."""

    pixels: int
    end: int | None
    found: dict[BaseTag, DataElement | RawDataElement]  # raw elements only: pydicom's Dataset takes either


def walk(data: bytes, implicit_vr: bool, kept: frozenset[int]) -> Walked | None:
    """The first top-level pixel data element of a dataset whose first bytes are ``data``, and the raw
    top-level elements before it whose tags are in ``kept`` (and the Specific Character Set), as
    pydicom's reader yields them; None where the walk gives up (module docstring)."""
    if len(data) >= 6 and _uppercase(data[4:6]) == implicit_vr:
        return None  # pydicom would read the dataset in the other VR encoding
    try:
        return _Walk(data, implicit_vr, kept | {CHARACTER_SET}).top()
    except _GiveUp:
        return None


def _uppercase(vr: bytes) -> bool:
    """pydicom's test for explicit VR (filereader._is_implicit_vr)."""
    return 0x40 < vr[0] < 0x5B and 0x40 < vr[1] < 0x5B


class _Walk:
    def __init__(self, data: bytes, implicit_vr: bool, kept: frozenset[int]) -> None:
        self.data, self.implicit_vr, self.kept = data, implicit_vr, kept

    def top(self) -> Walked:
        found: dict[BaseTag, DataElement | RawDataElement] = {}
        pos, size = 0, len(self.data)
        while True:
            if pos + 4 > size:
                raise _GiveUp  # the bytes ended before the pixel data
            tag, vr, length, start = self._header(pos)
            if tag in PIXEL_TAGS:  # pydicom reads its header, and skips a long value (defer_size)
                return Walked(pos, None if length == UNDEFINED else start + length, found)
            if tag >> 16 == 0xFFFE:
                raise _GiveUp
            if length == UNDEFINED:
                if tag in self.kept:
                    raise _GiveUp  # pydicom would keep a parsed sequence under it
                pos = self._sequence(tag, vr, start)
                continue
            end = self._end(start, length, size)
            if tag in self.kept:
                if length > 0xFFFF:
                    raise _GiveUp  # pydicom may defer a long value (read later from the file)
                value = self.data[start:end] if length else cast(bytes | None, empty_value_for_VR(vr, raw=True))
                found[BaseTag(tag)] = RawDataElement(BaseTag(tag), vr, length, value, start, self.implicit_vr, True)
            pos = end

    def _header(self, pos: int) -> tuple[int, str | None, int, int]:
        """Tag, VR (None in implicit VR), length and value offset of the element at ``pos``."""
        if pos + 8 > len(self.data):
            raise _GiveUp
        group, element, length = _TAG_LENGTH.unpack_from(self.data, pos)
        tag = group << 16 | element
        if self.implicit_vr or group == 0xFFFE:  # items and delimiters have no VR
            return tag, None, length, pos + 8
        raw_vr = self.data[pos + 4:pos + 6]
        if raw_vr in _VR16:
            return tag, raw_vr.decode(), _SHORT.unpack_from(self.data, pos + 6)[0], pos + 8
        if raw_vr in _VR32:
            if pos + 12 > len(self.data):
                raise _GiveUp
            return tag, raw_vr.decode(), _LONG.unpack_from(self.data, pos + 8)[0], pos + 12
        raise _GiveUp

    def _end(self, start: int, length: int, limit: int) -> int:
        if start + length > limit:
            raise _GiveUp
        return start + length

    def _sequence(self, tag: int, vr: str | None, pos: int) -> int:
        """The end of an undefined length sequence whose items begin at ``pos``."""
        if vr is None:
            try:
                vr = dictionary_VR(tag)
            except KeyError:
                raise _GiveUp from None
        if vr != "SQ":
            raise _GiveUp
        while True:
            item, _, length, start = self._header(pos)
            if item == SEQUENCE_END:
                if length:
                    raise _GiveUp
                return start
            if item != ITEM:
                raise _GiveUp
            pos = self._dataset(start, None if length == UNDEFINED else self._end(start, length, len(self.data)))

    def _dataset(self, pos: int, end: int | None) -> int:
        """The end of an item's dataset: at ``end`` for a defined length, after its delimiter otherwise."""
        limit = len(self.data) if end is None else end
        while end is None or pos < end:
            # in explicit VR, an element whose VR bytes are no VR gives up in _header: pydicom would read
            # the item in implicit VR (an item in implicit VR stays so in pydicom, as here)
            tag, vr, length, start = self._header(pos)
            if tag == ITEM_END and end is None:
                if length:
                    raise _GiveUp
                return start
            if tag >> 16 == 0xFFFE:
                raise _GiveUp
            pos = self._sequence(tag, vr, start) if length == UNDEFINED else self._end(start, length, limit)
        if pos != end:
            raise _GiveUp
        return pos
