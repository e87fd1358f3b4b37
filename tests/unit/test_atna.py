"""Every DICOM audit message the node can emit has the structure of PS3.15 A.5.1 and its event's codes."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest

from dicomnode.audit.anchor import Checkpoint, read_checkpoints
from dicomnode.audit.atna import EVENTS, Source, audit_message, checkpoint_message
from dicomnode.audit.events import AuditEvent
from dicomnode.audit.models import AuditRecord
from tests.support.audit_schema import check, codes

SOURCE = Source(ae_title="DICOMNODE", host="node1", pid=4242, site_id="HOSPITAL")
SOP = {"1.2.840.10008.5.1.4.1.1.4": 189}

# event -> (EventID, EventTypeCode or None, role codes of the active participants)
EXPECTED = {
    AuditEvent.APPLICATION_START: ("110100", "110120", {"110150"}),
    AuditEvent.APPLICATION_STOP: ("110100", "110121", {"110150"}),
    AuditEvent.ASSOCIATION_REJECTED: ("110113", "110126", {"110150"}),
    AuditEvent.USER_LOGIN_FAILED: ("110113", "110132", {"110150"}),
    AuditEvent.CONFIG_CHANGED: ("110113", "110128", {"110150"}),
    AuditEvent.REQUEST_REFUSED: ("110113", "110132", {"110150"}),
    AuditEvent.STUDY_NOT_OWNED: ("110113", "110132", {"110150"}),
    AuditEvent.BEGIN_TRANSFER_IN: ("110102", None, {"110153", "110152"}),
    AuditEvent.STUDY_RECEIVED: ("110104", None, {"110153", "110152"}),
    AuditEvent.BEGIN_TRANSFER_OUT: ("110102", None, {"110153", "110152"}),
    AuditEvent.RESULT_SENT: ("110104", None, {"110153", "110152"}),
    AuditEvent.RESULT_SEND_FAILED: ("110104", None, {"110153", "110152"}),
    AuditEvent.INSTANCES_ACCESSED: ("110103", None, {"110150"}),
    AuditEvent.STUDY_DELETED: ("110105", None, {"110150"}),
    AuditEvent.USER_LOGIN: ("110114", "110122", {"110150"}),
    AuditEvent.USER_LOGOUT: ("110114", "110123", {"110150"}),
    AuditEvent.AUDIT_EXPORTED: ("110101", None, {"110150"}),
    AuditEvent.QUERY: ("110112", None, {"110153", "110152"}),
}
STUDY_EVENTS = {AuditEvent.BEGIN_TRANSFER_IN, AuditEvent.STUDY_RECEIVED, AuditEvent.BEGIN_TRANSFER_OUT,
                AuditEvent.RESULT_SENT, AuditEvent.RESULT_SEND_FAILED, AuditEvent.INSTANCES_ACCESSED,
                AuditEvent.STUDY_DELETED}


def row(event: AuditEvent, outcome: str = "success", **detail: object) -> AuditRecord:
    study = event in STUDY_EVENTS
    return AuditRecord(id=1, at=dt.datetime(2026, 11, 23, 19, 30, 1, 123456, tzinfo=dt.UTC), event=event.value,
                       outcome=outcome, actor="ORTHANC" if study else "admin",
                       study_uid="1.2.3.4" if study else None, patient_id="PID-1" if study else None,
                       patient_name="DOE^JANE" if study else None,
                       detail=json.dumps({"address": "127.0.0.1", "sop_classes": SOP, **detail}),
                       prev_hash="0" * 64, hash="1" * 64)


def test_every_mapped_event_is_covered() -> None:
    assert set(EVENTS) == set(EXPECTED)


@pytest.mark.parametrize("event", sorted(EXPECTED))
def test_message_structure_and_codes(event: AuditEvent) -> None:
    xml = audit_message(row(event), SOURCE)
    assert xml is not None and xml.startswith(b"<?xml version='1.0' encoding='utf-8'?>\n<AuditMessage>")
    root = check(xml)
    event_id, type_code, roles = EXPECTED[event]
    assert codes(root, "EventIdentification/EventID") == [event_id]
    assert codes(root, "EventIdentification/EventTypeCode") == ([type_code] if type_code else [])
    assert roles <= set(codes(root, "ActiveParticipant/RoleIDCode"))
    source = root.find("AuditSourceIdentification")
    assert source is not None and source.get("AuditSourceID") == "DICOMNODE"
    assert source.get("AuditEnterpriseSiteID") == "HOSPITAL"
    assert [c.get("csd-code") for c in source.iterfind("AuditSourceTypeCode")] == ["4"]  # application server process
    if event in STUDY_EVENTS:
        objects = {o.get("ParticipantObjectTypeCodeRole"): o for o in root.iterfind("ParticipantObjectIdentification")}
        assert codes(objects["3"], "ParticipantObjectIDTypeCode") == ["110180"]
        assert objects["3"].get("ParticipantObjectID") == "1.2.3.4"
        sop = objects["3"].find("ParticipantObjectDescription/SOPClass")
        assert sop is not None and sop.get("NumberOfInstances") == "189"
        assert objects["1"].get("ParticipantObjectID") == "PID-1"
        assert objects["1"].findtext("ParticipantObjectName") == "DOE^JANE"


def test_outcome_and_description() -> None:
    xml = audit_message(row(AuditEvent.RESULT_SEND_FAILED, "serious_failure", status="0xA700"), SOURCE)
    assert xml is not None
    ident = check(xml).find("EventIdentification")
    assert ident is not None
    assert ident.get("EventOutcomeIndicator") == "8"
    assert ident.get("EventActionCode") == "R"
    assert ident.get("EventDateTime") == "2026-11-23T19:30:01.123456Z"
    assert ident.findtext("EventOutcomeDescription") == "0xA700"


@pytest.mark.parametrize(("outcome", "indicator"), [("success", "0"), ("minor_failure", "4"), ("serious_failure", "8"),
                                                     ("major_failure", "12"), ("unheard-of", "4")])
def test_each_outcome_has_its_indicator_and_an_unknown_one_is_no_success(outcome: str, indicator: str) -> None:
    """PS3.15 A.5.1 EventOutcomeIndicator: 0, 4, 8, 12; an outcome the mapping lacks is a minor failure."""
    ident = check(audit_message(row(AuditEvent.RESULT_SENT, outcome), SOURCE) or "").find("EventIdentification")
    assert ident is not None and ident.get("EventOutcomeIndicator") == indicator


def test_rule_change_is_software_configuration() -> None:
    xml = audit_message(row(AuditEvent.CONFIG_CHANGED, kind="rule"), SOURCE)
    assert xml is not None
    assert codes(check(xml), "EventIdentification/EventTypeCode") == ["110131"]


def test_internal_events_have_no_dicom_message() -> None:
    assert audit_message(row(AuditEvent.JOB_QUEUED), SOURCE) is None
    assert audit_message(row(AuditEvent.INSTANCE_RECEIVED), SOURCE) is None


def test_instances_accessed_names_the_person_or_the_model() -> None:
    """An admin's view of PHI names the user and address; a model's read is marked as the AI model."""
    person = check(audit_message(row(AuditEvent.INSTANCES_ACCESSED), SOURCE) or "")
    user = next(p for p in person.iterfind("ActiveParticipant") if p.get("UserIsRequestor") == "true")
    assert user.get("NetworkAccessPointID") == "127.0.0.1" and user.get("UserName") is None
    model_row = row(AuditEvent.INSTANCES_ACCESSED)
    model_row.detail = json.dumps({"sop_classes": SOP, "job_id": 3})
    model = check(audit_message(model_row, SOURCE) or "")
    reader = next(p for p in model.iterfind("ActiveParticipant") if p.get("UserIsRequestor") == "true")
    assert reader.get("UserName") == "AI model" and reader.get("NetworkAccessPointID") is None


def test_a_checkpoint_is_an_audit_log_used_message_that_reads_back(tmp_path: Path) -> None:
    checkpoint = Checkpoint(at="2026-11-23T19:30:01.123456Z", rows=42, head_id=45, head_hash="cd" * 32)
    xml = checkpoint_message(checkpoint, SOURCE)
    assert xml.startswith(b"<?xml version='1.0' encoding='utf-8'?>\n<AuditMessage>")  # RFC 5425: UTF-8, as stated
    root = check(xml)
    assert codes(root, "EventIdentification/EventID") == ["110101"]  # Audit Log Used
    assert root.findtext("EventIdentification/EventOutcomeDescription") == (
        "audit trail checkpoint: 42 rows, newest id 45")
    assert root.find("EventIdentification").get("EventActionCode") == "R"  # type: ignore[union-attr]
    trail = root.find("ParticipantObjectIdentification")
    assert trail is not None
    assert (trail.get("ParticipantObjectTypeCode"), trail.get("ParticipantObjectTypeCodeRole")) == ("2", "13")
    assert codes(trail, "ParticipantObjectIDTypeCode") == ["12"]  # URI
    collected = tmp_path / "collected.log"  # a raw syslog capture, among other audit messages
    other = audit_message(row(AuditEvent.AUDIT_EXPORTED), SOURCE)
    assert other is not None
    collected.write_bytes(b"\n".join([b"<85>1 - node1 dicomnode 7 IHE+RFC-3881 - \xef\xbb\xbf" + other,
                                      b"<85>1 - node1 dicomnode 7 IHE+RFC-3881 - \xef\xbb\xbf"
                                      + checkpoint_message(checkpoint, SOURCE)]))
    assert read_checkpoints(collected) == [checkpoint]


@pytest.mark.parametrize("event", [AuditEvent.BEGIN_TRANSFER_IN, AuditEvent.STUDY_RECEIVED])
def test_the_sending_peer_is_the_requestor_of_a_transfer_in(event: AuditEvent) -> None:
    xml = audit_message(row(event), SOURCE)
    assert xml is not None
    participants = check(xml).findall("ActiveParticipant")
    assert [(p.get("UserID"), p.get("UserIsRequestor")) for p in participants] == [
        ("ORTHANC", "true"), ("DICOMNODE", "false")]
    assert participants[0].get("NetworkAccessPointID") == "127.0.0.1"
    node = participants[1]  # the node, as the destination: its process and host (PS3.15 A.5.3.2)
    assert (node.get("AlternativeUserID"), node.get("NetworkAccessPointID")) == ("4242", "node1")


@pytest.mark.parametrize("event", [AuditEvent.USER_LOGIN, AuditEvent.USER_LOGIN_FAILED, AuditEvent.CONFIG_CHANGED,
                                   AuditEvent.REQUEST_REFUSED])
def test_a_person_is_named_with_the_address_they_came_from(event: AuditEvent) -> None:
    xml = audit_message(row(event), SOURCE)
    assert xml is not None
    person = check(xml).find("ActiveParticipant")
    assert person is not None
    assert (person.get("UserID"), person.get("NetworkAccessPointID")) == ("admin", "127.0.0.1")


def test_a_query_carries_the_identifier_as_the_peer_saw_it() -> None:
    """DICOM Query (PS3.15 A.5.3.12): the node asks (source), the peer answers; the SOP Class queried with
    the identifier, base64, as ParticipantObjectQuery (dicomnode.query)."""
    query = row(AuditEvent.QUERY, "minor_failure")
    query.detail = json.dumps({"sop_class": "1.2.840.10008.5.1.4.1.2.2.1", "query": "CAACAAAAAAA=",
                               "reason": "ORTHANC refused the C-FIND"})
    root = check(audit_message(query, SOURCE) or "")
    sop = next(o for o in root.iterfind("ParticipantObjectIdentification") if o.get("ParticipantObjectTypeCode") == "2"
               and codes(o, "ParticipantObjectIDTypeCode") == ["110181"])
    assert sop.get("ParticipantObjectID") == "1.2.840.10008.5.1.4.1.2.2.1"
    id_type = sop.find("ParticipantObjectIDTypeCode")
    assert id_type is not None and (id_type.get("codeSystemName"), id_type.get("originalText")) == (
        "DCM", "SOP Class UID")
    assert sop.findtext("ParticipantObjectQuery") == "CAACAAAAAAA="
    assert root.find("EventIdentification").get("EventOutcomeIndicator") == "4"  # type: ignore[union-attr]


# event -> whether the other party (the peer or person the row names) is the requestor; None: the node alone
REQUESTOR = {AuditEvent.BEGIN_TRANSFER_IN: True, AuditEvent.STUDY_RECEIVED: True,
             AuditEvent.BEGIN_TRANSFER_OUT: False, AuditEvent.RESULT_SENT: False, AuditEvent.RESULT_SEND_FAILED: False,
             AuditEvent.QUERY: False, AuditEvent.USER_LOGIN: True, AuditEvent.USER_LOGOUT: True,
             AuditEvent.USER_LOGIN_FAILED: True, AuditEvent.CONFIG_CHANGED: True, AuditEvent.AUDIT_EXPORTED: True,
             AuditEvent.REQUEST_REFUSED: True, AuditEvent.STUDY_NOT_OWNED: True, AuditEvent.INSTANCES_ACCESSED: True,
             AuditEvent.ASSOCIATION_REJECTED: True, AuditEvent.APPLICATION_START: None,
             AuditEvent.APPLICATION_STOP: None, AuditEvent.STUDY_DELETED: None}


@pytest.mark.parametrize("event", sorted(EXPECTED))
def test_every_message_names_the_node_by_process_and_host_and_the_other_party_by_its_own_role(
        event: AuditEvent) -> None:
    """PS3.15 A.5.3: the node's participant carries its process ID and host in every message; the peer or
    person is the requestor exactly when it asked, with the address it came from and none where the row
    has none."""
    assert set(REQUESTOR) == set(EXPECTED)
    for address in ("127.0.0.1", None):
        record = row(event)
        detail = json.loads(record.detail)
        if address is None:
            del detail["address"]
        record.detail = json.dumps(detail)
        participants = check(audit_message(record, SOURCE) or "").findall("ActiveParticipant")
        node = [p for p in participants if p.get("UserID") == "DICOMNODE"]
        assert len(node) == 1
        assert (node[0].get("AlternativeUserID"), node[0].get("NetworkAccessPointID"),
                node[0].get("NetworkAccessPointTypeCode")) == ("4242", "node1", "1")
        others = [p for p in participants if p.get("UserID") != "DICOMNODE"]
        if REQUESTOR[event] is None:
            assert others == [] and node[0].get("UserIsRequestor") == (
                "false" if event == AuditEvent.STUDY_DELETED else "true")
            continue
        assert len(others) == 1
        assert others[0].get("UserIsRequestor") == ("true" if REQUESTOR[event] else "false")
        assert node[0].get("UserIsRequestor") == ("false" if REQUESTOR[event] else "true")
        assert others[0].get("NetworkAccessPointID") == address


def test_a_row_without_a_reason_or_status_has_no_outcome_description() -> None:
    for detail, description in (({}, None), ({"status": "0xC210"}, "0xC210"),
                                ({"reason": "too large", "status": "0xA700"}, "too large")):
        record = row(AuditEvent.RESULT_SEND_FAILED, "serious_failure")
        record.detail = json.dumps({"sop_classes": SOP, **detail})
        ident = check(audit_message(record, SOURCE) or "").find("EventIdentification")
        assert ident is not None and ident.findtext("EventOutcomeDescription") == description


def test_a_message_is_utf_8_xml_whatever_characters_it_carries() -> None:
    """RFC 5424 and PS3.15 A.5: the XML is UTF-8, declared so; a name outside ASCII is its UTF-8 bytes."""
    record = row(AuditEvent.USER_LOGIN)
    record.actor = "müller"
    xml = audit_message(record, SOURCE)
    assert xml is not None and xml.startswith(b"<?xml version='1.0' encoding='utf-8'?>")
    assert "müller".encode() in xml and b"&#" not in xml
    assert check(xml).find("ActiveParticipant").get("UserID") == "müller"  # type: ignore[union-attr]


def test_a_query_without_its_identifier_carries_an_empty_one() -> None:
    """A query row that kept no identifier (the peer was never asked) has an empty ParticipantObjectQuery,
    never the word None."""
    query = row(AuditEvent.QUERY, "minor_failure")
    query.detail = json.dumps({"sop_class": "1.2.840.10008.5.1.4.1.2.2.1"})
    root = check(audit_message(query, SOURCE) or "")
    assert [q.text or "" for q in root.iter("ParticipantObjectQuery")] == [""]


def test_the_patient_is_identified_by_rfc_3881s_patient_number() -> None:
    """PS3.15 A.5.3 / RFC 3881: the patient participant's ID type is code 2, Patient Number, of RFC-3881."""
    root = check(audit_message(row(AuditEvent.STUDY_RECEIVED), SOURCE) or "")
    patient = next(o for o in root.iterfind("ParticipantObjectIdentification")
                   if o.get("ParticipantObjectTypeCode") == "1")
    id_type = patient.find("ParticipantObjectIDTypeCode")
    assert id_type is not None
    assert (id_type.get("csd-code"), id_type.get("codeSystemName"), id_type.get("originalText")) == (
        "2", "RFC-3881", "Patient Number")
    assert (patient.get("ParticipantObjectID"), patient.findtext("ParticipantObjectName")) == ("PID-1", "DOE^JANE")


def test_a_checkpoint_names_the_node_by_its_process_and_host() -> None:
    checkpoint = Checkpoint(at="2026-11-23T19:30:01.123456Z", rows=1, head_id=1, head_hash="ab" * 32)
    (node,) = check(checkpoint_message(checkpoint, SOURCE)).findall("ActiveParticipant")
    assert (node.get("UserID"), node.get("AlternativeUserID"), node.get("NetworkAccessPointID")) == (
        "DICOMNODE", "4242", "node1")


def test_a_checkpoint_whose_value_is_not_strict_base64_does_not_read(tmp_path: Path) -> None:
    """A checkpoint's value is base64 (RFC 4648) and read strictly: characters outside its alphabet make
    the capture unreadable at that message, never a checkpoint read from what was left of them."""
    checkpoint = Checkpoint(at="2026-11-23T19:30:01.123456Z", rows=3, head_id=3, head_hash="ef" * 32)
    xml = checkpoint_message(checkpoint, SOURCE)
    value = re.search(rb'value="([^"]+)"', xml.split(b"ParticipantObjectDetail", 1)[1])
    assert value is not None
    damaged = xml.replace(value.group(1), value.group(1)[:8] + b"*" + value.group(1)[8:])
    collected = tmp_path / "collected.log"
    collected.write_bytes(b"<85>1 - node1 dicomnode 7 IHE+RFC-3881 - \xef\xbb\xbf" + damaged)
    with pytest.raises(ValueError, match="audit message 1 in the file does not parse"):
        read_checkpoints(collected)
