from __future__ import annotations

import pytest
from pydantic import ValidationError

from dicomnode.net.tls import ClientCertificate
from dicomnode.receive.accept import CALLED_AE_NOT_RECOGNISED, CALLING_AE_NOT_RECOGNISED, decide
from dicomnode.settings import Peer

PEERS = (Peer(ae_title="ORTHANC", host="127.0.0.1", port=4242), Peer(ae_title="CT1", host="10.1.0.0/16"))


def call(calling: str, address: str = "127.0.0.1", called: str = "DICOMNODE", require: bool = True):  # type: ignore[no-untyped-def]
    return decide(own_ae="DICOMNODE", called_ae=called, calling_ae=calling, address=address, peers=PEERS,
                  require_known=require)


def test_known_peer_from_its_host_is_accepted() -> None:
    assert call("ORTHANC").accepted
    assert call("CT1", "10.1.200.3").accepted


def test_unknown_calling_ae_is_rejected() -> None:
    decision = call("INTRUDER")
    assert (decision.accepted, decision.diagnostic) == (False, CALLING_AE_NOT_RECOGNISED)
    assert "INTRUDER" in decision.reason


def test_known_ae_from_the_wrong_host_is_rejected() -> None:
    decision = call("CT1", "10.2.0.1")
    assert (decision.accepted, decision.diagnostic) == (False, CALLING_AE_NOT_RECOGNISED)
    assert "not from address 10.2.0.1" in decision.reason


def test_wrong_called_ae_is_rejected_even_when_open() -> None:
    decision = call("ORTHANC", called="OTHERNODE", require=False)
    assert (decision.accepted, decision.diagnostic) == (False, CALLED_AE_NOT_RECOGNISED)


def test_called_ae_padding_is_ignored() -> None:
    assert call("ORTHANC", called="DICOMNODE       ").accepted


def test_open_node_accepts_anyone() -> None:
    assert call("ANYONE", "192.0.2.1", require=False).accepted


@pytest.mark.parametrize("host", ["", "*"])
def test_a_peer_without_a_host_may_call_from_anywhere(host: str) -> None:
    peer = Peer.model_construct(ae_title="ANYWHERE", host=host, port=104, tls=False)
    decision = decide(own_ae="DICOMNODE", called_ae="DICOMNODE", calling_ae="ANYWHERE", address="203.0.113.9",
                      peers=(peer,), require_known=True)
    assert decision.accepted


def test_a_wrong_called_ae_title_is_named_in_the_reason() -> None:
    decision = call("ORTHANC", called="OTHERNODE")
    assert (decision.accepted, decision.diagnostic) == (False, CALLED_AE_NOT_RECOGNISED)
    assert decision.reason == "called AE title 'OTHERNODE' is not 'DICOMNODE'"


# -- peers bound to a client certificate ------------------------------------------------------------------

FINGERPRINT = "ab" * 32
BOUND = (Peer(ae_title="MTLSPEER", host="127.0.0.1", tls_subject_cn="MTLSPEER"),
         Peer(ae_title="PEERA", host="127.0.0.1", tls_sha256=":".join(["AB"] * 32)),
         Peer(ae_title="BOTH", host="127.0.0.1", tls_subject_cn="BOTH", tls_sha256=FINGERPRINT))


def bound_call(calling: str, certificate: ClientCertificate | None, require: bool = True):  # type: ignore[no-untyped-def]
    return decide(own_ae="DICOMNODE", called_ae="DICOMNODE", calling_ae=calling, address="127.0.0.1", peers=BOUND,
                  require_known=require, certificate=certificate)


def test_a_bound_peer_is_accepted_with_its_certificate() -> None:
    assert bound_call("MTLSPEER", ClientCertificate("MTLSPEER", "00" * 32)).accepted
    assert bound_call("PEERA", ClientCertificate(None, FINGERPRINT)).accepted  # colons and case normalised
    assert bound_call("BOTH", ClientCertificate("BOTH", FINGERPRINT)).accepted


@pytest.mark.parametrize(("calling", "certificate"), [
    ("MTLSPEER", ClientCertificate("OTHERCN", "00" * 32)),
    ("MTLSPEER", ClientCertificate("mtlspeer", "00" * 32)),  # the CN exactly
    ("PEERA", ClientCertificate("PEERA", "00" * 32)),
    ("BOTH", ClientCertificate("BOTH", "00" * 32)),  # both named: both must match
    ("BOTH", ClientCertificate("OTHER", FINGERPRINT)),
])
def test_a_bound_peer_with_another_certificate_is_rejected(calling: str, certificate: ClientCertificate) -> None:
    decision = bound_call(calling, certificate)
    assert (decision.accepted, decision.diagnostic, decision.kind) == (False, CALLING_AE_NOT_RECOGNISED, "certificate")
    assert decision.reason.endswith("another client certificate was presented")


@pytest.mark.parametrize("require", [True, False])
def test_a_bound_peer_without_a_certificate_is_rejected_even_when_open(require: bool) -> None:
    decision = bound_call("MTLSPEER", None, require=require)
    assert (decision.accepted, decision.kind) == (False, "certificate")
    assert decision.reason == ("calling AE title 'MTLSPEER' is bound to a TLS client certificate; no client "
                               "certificate was presented")


def test_the_rejection_kind_names_what_failed() -> None:
    assert call("ORTHANC", called="OTHERNODE").kind == "called_ae"
    assert call("INTRUDER").kind == "calling_ae"
    assert call("CT1", "10.2.0.1").kind == "address"


@pytest.mark.parametrize("value", ["ab" * 31, "zz" * 32, "ab" * 33])
def test_a_peer_fingerprint_must_be_sha256(value: str) -> None:
    with pytest.raises(ValidationError, match=r"tls_sha256 .* must be a SHA-256 fingerprint"):
        Peer(ae_title="PEERA", tls_sha256=value)
