from __future__ import annotations

import pytest

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
