"""``multipart/related`` bodies (RFC 2387, RFC 2046 5.1) as DICOMweb uses them (PS3.18 8.6.1.2).

:func:`parse_related` reads a whole body strictly: it raises :class:`MultipartError`, with the HTTP
status to answer, for anything short of a well-formed message whose every part is ``application/dicom``,
so that a malformed request stores nothing. :func:`encode_related` writes one.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

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


def _headers(raw: bytes) -> dict[str, str]:
    headers = {}
    for line in raw.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if not sep:
            raise MultipartError(400, "malformed part header")
        headers[name.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
    return headers


def _part(raw: bytes, default_type: str) -> bytes:
    """The content of one part, after checking its Content-Type."""
    if raw.startswith(b"\r\n"):  # no header fields: the part takes the message's type
        headers, content = {}, raw[2:]
    else:
        head, sep, content = raw.partition(b"\r\n\r\n")
        if not sep:
            raise MultipartError(400, "a part has no blank line after its headers")
        headers = _headers(head)
    kind = media_type(headers.get("content-type", default_type))[0]
    if kind != DICOM:
        raise MultipartError(415, f"a part is {kind[:64]!r}, not {DICOM}")
    if not content:
        raise MultipartError(400, "a part is empty")
    return content


def parse_related(body: bytes, content_type: str) -> list[bytes]:
    """The DICOM parts of a ``multipart/related; type="application/dicom"`` body.

    Raises
    ------
    MultipartError
        415 when the message or a part is not of that type; 400 when the body is malformed or truncated
        (no boundary, no closing delimiter, a part without headers' end), or holds no part.
    """
    kind, params = media_type(content_type)
    if kind != "multipart/related":
        raise MultipartError(415, f"Content-Type must be multipart/related; type=\"{DICOM}\"")
    default_type = params.get("type", DICOM)
    if media_type(default_type)[0] != DICOM:
        raise MultipartError(415, f"multipart/related type must be {DICOM}")
    boundary = params.get("boundary", "")
    if not boundary or len(boundary) > 70:
        raise MultipartError(400, "multipart/related without a valid boundary parameter")
    delimiter = b"--" + boundary.encode("latin-1")
    pos = 0 if body.startswith(delimiter) else body.find(b"\r\n" + delimiter) + 2
    if pos < 2 and not body.startswith(delimiter):
        raise MultipartError(400, "the body does not contain its boundary")
    pos += len(delimiter)
    parts = []
    while body[pos:pos + 2] != b"--":
        line_end = body.find(b"\r\n", pos)
        if line_end < 0:
            raise MultipartError(400, "the body ends inside a part (truncated)")
        following = body.find(b"\r\n" + delimiter, line_end)
        if following < 0:
            raise MultipartError(400, "the body ends inside a part (truncated: no closing boundary)")
        parts.append(_part(body[line_end + 2:following], default_type))
        pos = following + 2 + len(delimiter)
    if not parts:
        raise MultipartError(400, "the multipart body holds no part")
    return parts


def encode_related(parts: Sequence[bytes], part_type: str = DICOM) -> tuple[bytes, str]:
    """A ``multipart/related`` body of ``parts`` and its Content-Type header value."""
    boundary = f"dicomnode-{secrets.token_hex(12)}"
    chunks = []
    for part in parts:
        chunks += [f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode(), part, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f'multipart/related; type="{part_type}"; boundary="{boundary}"'
