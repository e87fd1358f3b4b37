"""multipart/related bodies: what encode_related writes, parse_related reads back, and RelatedReader reads
as it arrives, in pieces, never holding a part; anything malformed is refused."""

from __future__ import annotations

import random
import tracemalloc

import pytest

from dicomnode.net.multipart import DICOM, MultipartError, RelatedReader, encode_related, parse_related

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


class Pieces:
    """A PartSink that records what it was given, piece by piece."""

    def __init__(self) -> None:
        self.parts: list[list[bytes]] = []
        self.ended = 0

    def begin(self) -> None:
        self.parts.append([])

    def write(self, data: memoryview) -> None:
        self.parts[-1].append(bytes(data))

    def end(self) -> None:
        self.ended += 1


def _read(body: bytes, content_type: str, size: int) -> Pieces:
    sink = Pieces()
    reader = RelatedReader(content_type, sink)
    for start in range(0, len(body), size):
        reader.feed(body[start:start + size])
    assert reader.close() == len(sink.parts) == sink.ended
    return sink


@pytest.mark.parametrize("size", [1, 2, 7, 61, 4096])
def test_a_body_fed_in_pieces_reads_as_the_whole(size: int) -> None:
    """Delimiters, headers and the preamble split anywhere across pieces."""
    body, content_type = encode_related(PARTS)
    preamble = b"a preamble, --longer than the boundary's first bytes\r\n-- nearly\r\n"
    sink = _read(preamble + body, content_type, size)
    assert [b"".join(pieces) for pieces in sink.parts] == PARTS


def test_parts_go_to_the_sink_as_they_arrive() -> None:
    """A 4 MiB part fed in 64 KiB pieces reaches the sink in pieces no larger: nothing holds it whole."""
    part = random.Random(3).randbytes(4 * 2**20)
    body, content_type = encode_related([part, b"small"])
    sink = _read(body, content_type, 64 * 1024)
    assert b"".join(sink.parts[0]) == part and sink.parts[1] == [b"small"]
    assert max(len(piece) for piece in sink.parts[0]) <= 64 * 1024
    assert len(sink.parts[0]) >= 64


def test_a_part_of_another_type_is_refused_before_the_body_ends() -> None:
    body, content_type = encode_related([b"dicom", b"not dicom", b"more"], part_type="image/jpeg")
    reader = RelatedReader(content_type.replace("image/jpeg", DICOM, 1), Pieces())
    with pytest.raises(MultipartError, match="image/jpeg") as caught:
        reader.feed(body[: body.index(b"not dicom")])
    assert caught.value.status == 415


def test_a_preamble_without_a_delimiter_is_not_kept() -> None:
    reader = RelatedReader('multipart/related; boundary="b"', Pieces())
    chunk = b"x" * 65536
    tracemalloc.start()
    try:
        for _ in range(64):  # 4 MiB of preamble
            reader.feed(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * len(chunk), f"peak {peak} bytes while reading a preamble"
    with pytest.raises(MultipartError, match="boundary"):
        reader.close()
