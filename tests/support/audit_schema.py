"""A checker for the DICOM audit message structure of PS3.15 A.5.1 (the Relax NG schema, by hand).

Element order, required and allowed attributes, and the enumerated values of the schema; no package
ships the schema, so the tests carry this reading of it.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import xml.etree.ElementTree as ET

CODED = ({"csd-code", "codeSystemName", "originalText"}, {"displayName"})


class SchemaError(AssertionError):
    pass


def _attrs(element: ET.Element, required: set[str], optional: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    present = set(element.attrib)
    missing = required - present
    extra = present - required - set(optional)
    if missing or extra:
        raise SchemaError(f"<{element.tag}>: missing {sorted(missing)}, not allowed {sorted(extra)}")


def _coded(element: ET.Element) -> None:
    _attrs(element, *CODED)
    if list(element):
        raise SchemaError(f"<{element.tag}> must be empty")


def _enum(element: ET.Element, attribute: str, allowed: set[str]) -> None:
    value = element.get(attribute)
    if value is not None and value not in allowed:
        raise SchemaError(f"<{element.tag} {attribute}={value!r}> not one of {sorted(allowed)}")


def _sequence(children: list[ET.Element], pattern: list[tuple[str, str]]) -> None:
    """Check ``children`` against an ordered list of (tag, occurrence) with occurrence 1, ?, * or +."""
    i = 0
    for tag, occurrence in pattern:
        count = 0
        while i < len(children) and children[i].tag == tag:
            i, count = i + 1, count + 1
        if (occurrence in "1+" and count == 0) or (occurrence in "1?" and count > 1):
            raise SchemaError(f"<{tag}> occurs {count} times, expected {occurrence}")
    if i != len(children):
        raise SchemaError(f"unexpected <{children[i].tag}> at position {i}")


def check(xml: bytes) -> ET.Element:
    """Parse one AuditMessage and check it against the schema; returns the root."""
    root = ET.fromstring(xml)
    if root.tag != "AuditMessage" or root.attrib:
        raise SchemaError("the root must be a bare <AuditMessage>")
    children = list(root)
    _sequence(children, [("EventIdentification", "1"), ("ActiveParticipant", "+"),
                         ("AuditSourceIdentification", "1"), ("ParticipantObjectIdentification", "*")])
    for child in children:
        {"EventIdentification": _event, "ActiveParticipant": _participant,
         "AuditSourceIdentification": _source, "ParticipantObjectIdentification": _object}[child.tag](child)
    return root


def _event(element: ET.Element) -> None:
    _attrs(element, {"EventDateTime", "EventOutcomeIndicator"}, {"EventActionCode"})
    _enum(element, "EventActionCode", set("CRUDE"))
    _enum(element, "EventOutcomeIndicator", {"0", "4", "8", "12"})
    dt.datetime.fromisoformat(element.get("EventDateTime", "").replace("Z", "+00:00"))
    children = list(element)
    _sequence(children, [("EventID", "1"), ("EventTypeCode", "*"), ("EventOutcomeDescription", "?")])
    for child in children:
        if child.tag != "EventOutcomeDescription":
            _coded(child)


def _participant(element: ET.Element) -> None:
    _attrs(element, {"UserID", "UserIsRequestor"},
           {"AlternativeUserID", "UserName", "NetworkAccessPointID", "NetworkAccessPointTypeCode"})
    _enum(element, "UserIsRequestor", {"true", "false", "1", "0"})
    _enum(element, "NetworkAccessPointTypeCode", {"1", "2", "3", "4", "5"})
    children = list(element)
    _sequence(children, [("RoleIDCode", "*"), ("MediaIdentifier", "?")])
    for child in children:
        if child.tag == "RoleIDCode":
            _coded(child)


def _source(element: ET.Element) -> None:
    _attrs(element, {"AuditSourceID"}, {"AuditEnterpriseSiteID"})
    children = list(element)
    _sequence(children, [("AuditSourceTypeCode", "*")])
    for child in children:
        _attrs(child, {"csd-code"}, {"codeSystemName", "originalText", "displayName"})


def _object(element: ET.Element) -> None:
    _attrs(element, {"ParticipantObjectID"}, {"ParticipantObjectTypeCode", "ParticipantObjectTypeCodeRole",
                                              "ParticipantObjectDataLifeCycle", "ParticipantObjectSensitivity"})
    _enum(element, "ParticipantObjectTypeCode", {"1", "2", "3", "4"})
    _enum(element, "ParticipantObjectTypeCodeRole", {str(i) for i in range(1, 27)})
    _enum(element, "ParticipantObjectDataLifeCycle", {str(i) for i in range(1, 16)})
    children = list(element)
    name_or_query = "ParticipantObjectName" if any(c.tag == "ParticipantObjectName" for c in children) \
        else "ParticipantObjectQuery"
    _sequence(children, [("ParticipantObjectIDTypeCode", "1"), (name_or_query, "1"),
                         ("ParticipantObjectDetail", "*"), ("ParticipantObjectDescription", "*")])
    _coded(children[0])
    for child in children:
        if child.tag == "ParticipantObjectDetail":  # ValuePair: a token type, a base64Binary value
            _attrs(child, {"type", "value"})
            try:
                base64.b64decode(child.get("value", ""), validate=True)
            except binascii.Error as exc:
                raise SchemaError("<ParticipantObjectDetail value> is not base64") from exc
        if child.tag == "ParticipantObjectDescription":
            for item in child:
                if item.tag not in {"MPPS", "Accession", "SOPClass", "ParticipantObjectContainsStudy",
                                    "Encrypted", "Anonymized"}:
                    raise SchemaError(f"<{item.tag}> not allowed in ParticipantObjectDescription")
                if item.tag == "SOPClass":
                    _attrs(item, {"NumberOfInstances"}, {"UID"})
                    int(item.get("NumberOfInstances", ""))


def codes(root: ET.Element, path: str) -> list[str]:
    return [e.get("csd-code", "") for e in root.iterfind(path)]
