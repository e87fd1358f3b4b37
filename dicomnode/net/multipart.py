"""``multipart/related`` bodies (RFC 2387, RFC 2046 5.1) as DICOMweb uses them (PS3.18 8.6.1.2).

:class:`RelatedReader` reads a body as it arrives, with python-multipart's streaming parser: each part's
content goes to a :class:`PartSink` chunk by chunk, so that neither the body nor a part is ever held
whole. It is strict: it raises :class:`MultipartError`, with the HTTP status to answer, for anything
short of a well-formed message whose every part is ``application/dicom``, so that its caller can store
nothing of a malformed request. :func:`parse_related` reads a whole body held in memory (a small one:
the results another node answers with); :func:`encode_related` writes one.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Protocol

from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError

DICOM = "application/dicom"


class MultipartError(ValueError):
    """The request body is not a well-formed multipart/related message of DICOM parts."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def media_type(header: str) -> tuple[str, dict[str, str]]:
    """``type/subtype`` (lower case) and its parameters (names lower case, values unquoted)."""
    kind, *params = [item.strip() for item in header.split(";")]
    parsed = {}
    for item in params:
        name, sep, value = item.partition("=")
        if sep:
            parsed[name.strip().lower()] = value.strip().strip('"')
    return kind.lower(), parsed


def _message(content_type: str) -> tuple[bytes, str]:
    """The boundary and the parts' default type of a ``multipart/related`` Content-Type."""
    kind, params = media_type(content_type)
    if kind != "multipart/related":
        raise MultipartError(415, f"Content-Type must be multipart/related; type=\"{DICOM}\"")
    default_type = params.get("type", DICOM)
    if media_type(default_type)[0] != DICOM:
        raise MultipartError(415, f"multipart/related type must be {DICOM}")
    boundary = params.get("boundary", "")
    if not boundary or len(boundary) > 70:
        raise MultipartError(400, "multipart/related without a valid boundary parameter")
    return boundary.encode("latin-1"), default_type


class PartSink(Protocol):
    """Where :class:`RelatedReader` puts the parts: ``begin`` when a part's headers were read (and its
    type checked), ``write`` for each piece of its content as it arrives, ``end`` after its last."""

    def begin(self) -> None: ...

    def write(self, data: memoryview) -> None: ...

    def end(self) -> None: ...


class RelatedReader:
    """A ``multipart/related; type="application/dicom"`` body, fed as it arrives, its parts to ``sink``.

    Parameters
    ----------
    content_type
        The request's Content-Type header value.
    sink
        Gets each part's content in pieces (:class:`PartSink`); none is held here.

    Raises
    ------
    MultipartError
        Here, 415 for a message that is not of that type and 400 for one without a valid boundary; from
        :meth:`feed` and :meth:`close`, 415 for a part of another type, 400 for a malformed or truncated
        body, a part without content, or none at all.
    """

    def __init__(self, content_type: str, sink: PartSink) -> None:
        boundary, self._default_type = _message(content_type)
        self._sink = sink
        self._first = b"\r\n--" + boundary  # the first delimiter starts the body or follows the preamble's line
        self._preamble_tail: bytes | None = b"\r\n"  # None once the first delimiter was found
        self._headers: dict[str, str] = {}
        self._field = bytearray()
        self._value = bytearray()
        self._size = 0
        self._ended = False
        self.parts = 0
        self._parser = MultipartParser(boundary, callbacks={
            "on_part_begin": self._part_begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
            "on_part_end": self._part_end, "on_end": self._end})

    def feed(self, chunk: bytes) -> None:
        """The next piece of the body."""
        if self._preamble_tail is not None:
            chunk = self._skip_preamble(chunk)
        if chunk:
            try:
                self._parser.write(chunk)
            except MultipartParseError as exc:
                raise MultipartError(400, f"malformed multipart body: {exc}") from None

    def close(self) -> int:
        """The body has ended: the number of parts, once it is known to be whole."""
        if self._preamble_tail is not None:
            raise MultipartError(400, "the body does not contain its boundary")
        if not self._ended:
            raise MultipartError(400, "the body ends inside a part (truncated: no closing boundary)")
        if not self.parts:
            raise MultipartError(400, "the multipart body holds no part")
        return self.parts

    def _skip_preamble(self, chunk: bytes) -> bytes:
        """What follows the preamble (RFC 2046 5.1.1), from the first delimiter on; b"" while it has not
        come. Only the preamble's last bytes are kept, however long it is."""
        assert self._preamble_tail is not None
        seen = self._preamble_tail + chunk
        at = seen.find(self._first)
        if at < 0:
            self._preamble_tail = seen[-(len(self._first) - 1):]
            return b""
        self._preamble_tail = None
        return seen[at + 2:]

    def _part_begin(self) -> None:
        self._headers, self._size = {}, 0

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        name = self._field.decode("latin-1").strip().lower()
        self._headers[name] = self._value.decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        kind = media_type(self._headers.get("content-type", self._default_type))[0]
        if kind != DICOM:
            raise MultipartError(415, f"a part is {kind[:64]!r}, not {DICOM}")
        self.parts += 1
        self._sink.begin()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self._size += end - start
        self._sink.write(memoryview(data)[start:end])

    def _part_end(self) -> None:
        if not self._size:
            raise MultipartError(400, "a part is empty")
        self._sink.end()

    def _end(self) -> None:
        self._ended = True


class _Collected:
    """A :class:`PartSink` that keeps the parts in memory (:func:`parse_related`)."""

    def __init__(self) -> None:
        self.parts: list[bytearray] = []

    def begin(self) -> None:
        self.parts.append(bytearray())

    def write(self, data: memoryview) -> None:
        self.parts[-1] += data

    def end(self) -> None:
        pass


def parse_related(body: bytes, content_type: str) -> list[bytes]:
    """The DICOM parts of a whole ``multipart/related; type="application/dicom"`` body held in memory.

    Raises
    ------
    MultipartError
        As :class:`RelatedReader` does.
    """
    collected = _Collected()
    reader = RelatedReader(content_type, collected)
    reader.feed(body)
    reader.close()
    return [bytes(part) for part in collected.parts]


def encode_related(parts: Sequence[bytes], part_type: str = DICOM) -> tuple[bytes, str]:
    """A ``multipart/related`` body of ``parts`` and its Content-Type header value."""
    boundary = f"dicomnode-{secrets.token_hex(12)}"
    chunks = []
    for part in parts:
        chunks += [f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode(), part, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f'multipart/related; type="{part_type}"; boundary="{boundary}"'
