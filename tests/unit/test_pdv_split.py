"""The native data phase splits a P-DATA-TF PDU into its PDVs (PS3.8 9.3.5), or says it is malformed (None),
never raising on the bytes a peer sends."""

from __future__ import annotations

import struct

import pytest

from dicomnode.receive.dataphase.native import _split


def _pdv(context_id: int, control: int, data: bytes) -> bytes:
    return struct.pack(">LBB", len(data) + 2, context_id, control) + data


def _pdu(body: bytes, length: int | None = None) -> bytearray:
    return bytearray(struct.pack(">BBL", 4, 0, len(body) if length is None else length) + body)


def test_a_well_formed_pdu_gives_each_pdv_with_its_fragment() -> None:
    pdu = _pdu(_pdv(1, 0b11, b"cmd!") + _pdv(3, 0b00, b"data"))
    assert _split(pdu) == [(1, 0b11, 12, 16), (3, 0b00, 22, 26)]


@pytest.mark.parametrize("case", ["a PDV header cut short", "an even context ID", "an item shorter than 2",
                                  "an item running past the PDU", "no PDV"])
def test_a_malformed_pdu_is_none(case: str) -> None:
    good = _pdv(1, 0b10, b"data")
    body = {"a PDV header cut short": good + b"\x00\x00\x00",
            "an even context ID": _pdv(2, 0b10, b"data"),
            "an item shorter than 2": struct.pack(">LBB", 1, 1, 0),
            "no PDV": b"",
            "an item running past the PDU": struct.pack(">LBB", 100, 1, 0) + b"data"}[case]
    assert _split(_pdu(body)) is None
