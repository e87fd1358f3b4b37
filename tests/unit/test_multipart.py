"""multipart/related bodies: what encode_related writes, parse_related reads back; anything malformed is refused."""

from __future__ import annotations

import pytest

from dicomnode.net.multipart import MultipartError, encode_related, parse_related

PARTS = [b"first\r\n--not-a-boundary", b"\x00" * 10, b"third"]


def test_round_trip() -> None:
    body, content_type = encode_related(PARTS)
    assert parse_related(body, content_type) == PARTS


def test_a_preamble_and_parts_without_headers_are_read() -> None:
    body = b"preamble\r\n--b\r\n\r\none\r\n--b\r\nContent-Type: application/dicom\r\n\r\ntwo\r\n--b--\r\n"
    assert parse_related(body, 'multipart/related; boundary="b"') == [b"one", b"two"]


@pytest.mark.parametrize(("content_type", "status", "match"), [
    ("application/dicom", 415, "must be multipart/related"),
    ('multipart/related; type="application/dicom+json"; boundary=b', 415, "type must be"),
    ('multipart/related; type="application/dicom"', 400, "boundary"),
])
def test_the_message_type_is_checked(content_type: str, status: int, match: str) -> None:
    with pytest.raises(MultipartError, match=match) as caught:
        parse_related(b"--b\r\n\r\nx\r\n--b--", content_type)
    assert caught.value.status == status


@pytest.mark.parametrize(("body", "status", "match"), [
    (b"--b\r\n\r\nx\r\n", 400, "truncated"),
    (b"--b\r\n\r\nx", 400, "truncated"),
    (b"nothing here", 400, "boundary"),
    (b"--b--\r\n", 400, "no part"),
    (b"--b\r\nContent-Type: image/jpeg\r\n\r\nx\r\n--b--", 415, "image/jpeg"),
    (b"--b\r\nContent-Type application/dicom\r\n\r\nx\r\n--b--", 400, "header"),
    (b"--b\r\n\r\n\r\n--b--", 400, "empty"),
])
def test_malformed_bodies_are_refused(body: bytes, status: int, match: str) -> None:
    with pytest.raises(MultipartError, match=match) as caught:
        parse_related(body, "multipart/related; type=application/dicom; boundary=b")
    assert caught.value.status == status
