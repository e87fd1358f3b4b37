"""A Store Instances Response (PS3.18 10.5.3, DICOM JSON) read into one status per instance."""

from __future__ import annotations

import json

from dicomnode.send.stow import WARNING, answers, entries

_REFERENCED, _FAILED, _UID, _REASON, _WARNING = "00081199", "00081198", "00081155", "00081197", "00081196"


def _item(uid: str, **more: int) -> dict[str, object]:
    item: dict[str, object] = {_UID: {"vr": "UI", "Value": [uid]}}
    for tag, value in more.items():
        item[tag] = {"vr": "US", "Value": [value]}
    return item


def test_every_instance_gets_its_own_status() -> None:
    body = json.dumps({
        _REFERENCED: {"vr": "SQ", "Value": [_item("1.2.1"), _item("1.2.2", **{_WARNING: 0xB000})]},
        _FAILED: {"vr": "SQ", "Value": [_item("1.2.3", **{_REASON: 0xA700}), _item("1.2.4")]},
    }).encode()
    assert answers(body) == {"1.2.1": 0, "1.2.2": WARNING, "1.2.3": 0xA700, "1.2.4": 0x0110}


def test_a_response_that_lists_only_failures_is_read() -> None:
    """A server that stored nothing (409) may leave the Referenced SOP Sequence out altogether."""
    body = json.dumps({_FAILED: {"vr": "SQ", "Value": [_item("1.2.3", **{_REASON: 0xC122})]}}).encode()
    assert answers(body) == {"1.2.3": 0xC122}


def test_no_body_or_no_json_is_no_answer() -> None:
    assert answers(b"") == answers(b"  \n") == answers(b"<html>bad gateway</html>") == answers(b"{") == {}


def test_each_failure_counts_even_where_it_names_no_instance() -> None:
    """A part refused before its header arrived is an entry with empty UIDs (dicomnode's own STOW-RS answers
    so): two such are two failures, not one, so that a sender never takes a short answer for a whole one."""
    empty = {_UID: {"vr": "UI"}, _REASON: {"vr": "US", "Value": [0xA700]}}
    body = json.dumps({_REFERENCED: {"vr": "SQ", "Value": [_item("1.2.1")]},
                       _FAILED: {"vr": "SQ", "Value": [empty, empty]}}).encode()
    assert entries(body) == [("1.2.1", 0), ("", 0xA700), ("", 0xA700)]
