"""DICOM audit messages (PS3.15 A.5, derived from RFC 3881) built from audit rows.

One audit row gives at most one message. Rows about internal steps (job queued, job started, ...) have
no DICOM audit event and stay in the trail only. Element order and attribute names follow the schema of
PS3.15 A.5.1; the codes come from PS3.16 (DCM) and RFC 3881.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from dicomnode.audit.anchor import CHECKPOINT_DETAIL, Checkpoint, checkpoint_line
from dicomnode.audit.events import AuditEvent
from dicomnode.audit.models import AuditRecord

Code = tuple[str, str]  # (csd-code, originalText), codeSystemName DCM

APPLICATION_ACTIVITY: Code = ("110100", "Application Activity")
AUDIT_LOG_USED: Code = ("110101", "Audit Log Used")
BEGIN_TRANSFERRING: Code = ("110102", "Begin Transferring DICOM Instances")
INSTANCES_ACCESSED: Code = ("110103", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED: Code = ("110104", "DICOM Instances Transferred")
STUDY_DELETED: Code = ("110105", "DICOM Study Deleted")
QUERY: Code = ("110112", "Query")
SECURITY_ALERT: Code = ("110113", "Security Alert")
USER_AUTHENTICATION: Code = ("110114", "User Authentication")

APPLICATION_START: Code = ("110120", "Application Start")
APPLICATION_STOP: Code = ("110121", "Application Stop")
LOGIN: Code = ("110122", "Login")
LOGOUT: Code = ("110123", "Logout")
NODE_AUTHENTICATION: Code = ("110126", "Node Authentication")
NETWORK_CONFIGURATION: Code = ("110128", "Network Configuration")
SOFTWARE_CONFIGURATION: Code = ("110131", "Software Configuration")
RESTRICTED_FUNCTION: Code = ("110132", "Use of Restricted Function")

ROLE_APPLICATION: Code = ("110150", "Application")
ROLE_DESTINATION: Code = ("110152", "Destination Role ID")
ROLE_SOURCE: Code = ("110153", "Source Role ID")

OUTCOME = {"success": "0", "minor_failure": "4", "serious_failure": "8", "major_failure": "12"}


@dataclass(frozen=True)
class EventSpec:
    event_id: Code
    type_code: Code | None
    action: str  # C R U D E


EVENTS: dict[str, EventSpec] = {
    AuditEvent.APPLICATION_START: EventSpec(APPLICATION_ACTIVITY, APPLICATION_START, "E"),
    AuditEvent.APPLICATION_STOP: EventSpec(APPLICATION_ACTIVITY, APPLICATION_STOP, "E"),
    AuditEvent.ASSOCIATION_REJECTED: EventSpec(SECURITY_ALERT, NODE_AUTHENTICATION, "E"),
    AuditEvent.USER_LOGIN_FAILED: EventSpec(SECURITY_ALERT, RESTRICTED_FUNCTION, "E"),
    AuditEvent.CONFIG_CHANGED: EventSpec(SECURITY_ALERT, NETWORK_CONFIGURATION, "U"),
    AuditEvent.REQUEST_REFUSED: EventSpec(SECURITY_ALERT, RESTRICTED_FUNCTION, "E"),
    AuditEvent.STUDY_NOT_OWNED: EventSpec(SECURITY_ALERT, RESTRICTED_FUNCTION, "E"),
    AuditEvent.BEGIN_TRANSFER_IN: EventSpec(BEGIN_TRANSFERRING, None, "E"),
    AuditEvent.STUDY_RECEIVED: EventSpec(INSTANCES_TRANSFERRED, None, "C"),
    AuditEvent.BEGIN_TRANSFER_OUT: EventSpec(BEGIN_TRANSFERRING, None, "E"),
    AuditEvent.RESULT_SENT: EventSpec(INSTANCES_TRANSFERRED, None, "R"),
    AuditEvent.RESULT_SEND_FAILED: EventSpec(INSTANCES_TRANSFERRED, None, "R"),
    AuditEvent.INSTANCES_ACCESSED: EventSpec(INSTANCES_ACCESSED, None, "R"),
    AuditEvent.STUDY_DELETED: EventSpec(STUDY_DELETED, None, "D"),
    AuditEvent.USER_LOGIN: EventSpec(USER_AUTHENTICATION, LOGIN, "E"),
    AuditEvent.USER_LOGOUT: EventSpec(USER_AUTHENTICATION, LOGOUT, "E"),
    AuditEvent.AUDIT_EXPORTED: EventSpec(AUDIT_LOG_USED, None, "R"),
    AuditEvent.QUERY: EventSpec(QUERY, None, "E"),
}


@dataclass(frozen=True)
class Source:
    """The node as the audit source and as an active participant."""

    ae_title: str
    host: str
    pid: int
    site_id: str = ""


def _code(parent: ET.Element, tag: str, code: Code, system: str = "DCM") -> ET.Element:
    return ET.SubElement(parent, tag, {"csd-code": code[0], "codeSystemName": system, "originalText": code[1]})


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def _participant(parent: ET.Element, user_id: str, requestor: bool, role: Code | None, *,
                 address: str = "", alternative: str = "", user_name: str = "") -> None:
    attrs = {"UserID": user_id or "unknown", "UserIsRequestor": "true" if requestor else "false"}
    if alternative:
        attrs["AlternativeUserID"] = alternative
    if user_name:
        attrs["UserName"] = user_name
    if address:
        attrs["NetworkAccessPointID"] = address
        attrs["NetworkAccessPointTypeCode"] = "2" if _is_ip(address) else "1"  # IP address, else machine name
    element = ET.SubElement(parent, "ActiveParticipant", attrs)
    if role is not None:
        _code(element, "RoleIDCode", role)


def _participants(root: ET.Element, row: AuditRecord, detail: dict[str, Any], source: Source) -> None:
    node = {"alternative": str(source.pid), "address": source.host}
    event = row.event
    if event in (AuditEvent.BEGIN_TRANSFER_IN, AuditEvent.STUDY_RECEIVED):
        _participant(root, row.actor, True, ROLE_SOURCE, address=str(detail.get("address", "")))
        _participant(root, source.ae_title, False, ROLE_DESTINATION, **node)
    elif event in (AuditEvent.BEGIN_TRANSFER_OUT, AuditEvent.RESULT_SENT, AuditEvent.RESULT_SEND_FAILED,
                   AuditEvent.QUERY):  # a query: the node asks (source), the peer answers (destination)
        _participant(root, source.ae_title, True, ROLE_SOURCE, **node)
        _participant(root, row.actor or str(detail.get("destination", "")), False, ROLE_DESTINATION,
                     address=str(detail.get("address", "")))
    elif event in (AuditEvent.USER_LOGIN, AuditEvent.USER_LOGOUT, AuditEvent.USER_LOGIN_FAILED,
                   AuditEvent.CONFIG_CHANGED, AuditEvent.AUDIT_EXPORTED, AuditEvent.REQUEST_REFUSED,
                   AuditEvent.STUDY_NOT_OWNED):
        _participant(root, row.actor, True, None, address=str(detail.get("address", "")))
        _participant(root, source.ae_title, False, ROLE_APPLICATION, **node)
    elif event == AuditEvent.INSTANCES_ACCESSED and detail.get("address"):  # a person, through the admin API
        _participant(root, row.actor, True, None, address=str(detail["address"]))
        _participant(root, source.ae_title, False, ROLE_APPLICATION, **node)
    elif event == AuditEvent.INSTANCES_ACCESSED:  # a model reading a series
        _participant(root, row.actor, True, None, user_name="AI model")
        _participant(root, source.ae_title, False, ROLE_APPLICATION, **node)
    elif event == AuditEvent.ASSOCIATION_REJECTED:
        _participant(root, source.ae_title, False, ROLE_APPLICATION, **node)
        _participant(root, row.actor, True, None, address=str(detail.get("address", "")))
    else:  # application activity, study deleted
        _participant(root, source.ae_title, event != AuditEvent.STUDY_DELETED, ROLE_APPLICATION, **node)


def _objects(root: ET.Element, row: AuditRecord, detail: dict[str, Any]) -> None:
    if row.event == AuditEvent.QUERY and detail.get("sop_class"):  # PS3.15 A.5.3.12: the query as the peer saw it
        query = ET.SubElement(root, "ParticipantObjectIdentification", {
            "ParticipantObjectID": str(detail["sop_class"]), "ParticipantObjectTypeCode": "2",
            "ParticipantObjectTypeCodeRole": "3"})
        _code(query, "ParticipantObjectIDTypeCode", ("110181", "SOP Class UID"))
        ET.SubElement(query, "ParticipantObjectQuery").text = str(detail.get("query", ""))
        ET.SubElement(query, "ParticipantObjectDetail", {
            "type": "TransferSyntax", "value": base64.b64encode(b"1.2.840.10008.1.2").decode("ascii")})
    if row.study_uid:
        study = ET.SubElement(root, "ParticipantObjectIdentification", {
            "ParticipantObjectID": row.study_uid, "ParticipantObjectTypeCode": "2",
            "ParticipantObjectTypeCodeRole": "3"})
        _code(study, "ParticipantObjectIDTypeCode", ("110180", "Study Instance UID"))
        ET.SubElement(study, "ParticipantObjectName").text = row.study_uid
        sop_classes = detail.get("sop_classes") or {}
        if sop_classes:
            description = ET.SubElement(study, "ParticipantObjectDescription")
            for uid, count in sorted(sop_classes.items()):
                ET.SubElement(description, "SOPClass", {"UID": uid, "NumberOfInstances": str(int(count))})
    if row.patient_id is not None or row.patient_name is not None:
        patient = ET.SubElement(root, "ParticipantObjectIdentification", {
            "ParticipantObjectID": row.patient_id or "", "ParticipantObjectTypeCode": "1",
            "ParticipantObjectTypeCodeRole": "1"})
        _code(patient, "ParticipantObjectIDTypeCode", ("2", "Patient Number"), system="RFC-3881")
        ET.SubElement(patient, "ParticipantObjectName").text = row.patient_name or ""


def event_datetime(at: dt.datetime) -> str:
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    return at.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def audit_message(row: AuditRecord, source: Source) -> bytes | None:
    """The DICOM AuditMessage for ``row`` as UTF-8 XML, or None when the row has no DICOM audit event."""
    spec = EVENTS.get(row.event)
    if spec is None:
        return None
    detail: dict[str, Any] = json.loads(row.detail or "{}")
    root = ET.Element("AuditMessage")
    ident = ET.SubElement(root, "EventIdentification", {
        "EventActionCode": spec.action, "EventDateTime": event_datetime(row.at),
        "EventOutcomeIndicator": OUTCOME.get(row.outcome, "4")})
    _code(ident, "EventID", spec.event_id)
    if row.event == AuditEvent.CONFIG_CHANGED and detail.get("kind") == "rule":
        _code(ident, "EventTypeCode", SOFTWARE_CONFIGURATION)
    elif spec.type_code is not None:
        _code(ident, "EventTypeCode", spec.type_code)
    description = detail.get("reason") or detail.get("status") or ""
    if description:
        ET.SubElement(ident, "EventOutcomeDescription").text = str(description)[:1024]
    _participants(root, row, detail, source)
    _audit_source(root, source)
    _objects(root, row, detail)
    xml: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return xml


def _audit_source(root: ET.Element, source: Source) -> None:
    audit_source = ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": source.ae_title})
    if source.site_id:
        audit_source.set("AuditEnterpriseSiteID", source.site_id)
    ET.SubElement(audit_source, "AuditSourceTypeCode", {"csd-code": "4"})  # application server process


def checkpoint_message(checkpoint: Checkpoint, source: Source) -> bytes:
    """The trail's head as an "Audit Log Used" message (PS3.15 A.5.3.3), as UTF-8 XML.

    The node reads its own trail (action R) to take the checkpoint; the participant object is the trail
    (system object, role Security Resource, identified by URI), and its ParticipantObjectDetail of type
    ``dicomnode-audit-checkpoint`` carries the anchor file's JSON line, base64-encoded as the schema's
    ValuePair asks. ``dicomnode audit verify --anchor`` reads it back from a collected syslog file.
    """
    root = ET.Element("AuditMessage")
    ident = ET.SubElement(root, "EventIdentification", {
        "EventActionCode": "R", "EventDateTime": checkpoint.at, "EventOutcomeIndicator": OUTCOME["success"]})
    _code(ident, "EventID", AUDIT_LOG_USED)
    ET.SubElement(ident, "EventOutcomeDescription").text = (
        f"audit trail checkpoint: {checkpoint.rows} rows, newest id {checkpoint.head_id}")
    _participant(root, source.ae_title, True, ROLE_APPLICATION, alternative=str(source.pid), address=source.host)
    _audit_source(root, source)
    trail = ET.SubElement(root, "ParticipantObjectIdentification", {
        "ParticipantObjectID": f"urn:dicomnode:audit-trail:{source.ae_title}", "ParticipantObjectTypeCode": "2",
        "ParticipantObjectTypeCodeRole": "13"})  # system object, security resource
    _code(trail, "ParticipantObjectIDTypeCode", ("12", "URI"), system="RFC-3881")
    ET.SubElement(trail, "ParticipantObjectName").text = "Security Audit Log"
    ET.SubElement(trail, "ParticipantObjectDetail", {
        "type": CHECKPOINT_DETAIL, "value": base64.b64encode(checkpoint_line(checkpoint).encode()).decode()})
    xml: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return xml
