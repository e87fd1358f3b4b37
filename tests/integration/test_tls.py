"""DICOM TLS (PS3.15 B.9) at both boundaries, with DCMTK as the foreign TLS peer and throwaway certificates."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
from sqlalchemy import select

from dicomnode.audit.models import AuditRecord
from dicomnode.config_store import put_peer
from dicomnode.db import session_scope
from dicomnode.net.tls import server_context
from dicomnode.send.scu import echo, send_files
from dicomnode.settings import Peer, Settings
from tests.conftest import make_settings
from tests.integration.conftest import StartScp
from tests.support.certs import KeyPair, make_ca, make_cert, sha256_fingerprint
from tests.support.net import free_port, wait_for
from tests.support.peers import echoscu, storescp
from tests.support.synthetic import make_series, write_series


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeyPair]:
    folder = tmp_path_factory.mktemp("pki")
    ca, rogue = make_ca(folder, "hospital-ca"), make_ca(folder, "rogue-ca")
    return {"ca": ca, "node": make_cert(ca, folder, "node"), "pacs": make_cert(ca, folder, "pacs"),
            "rogue": make_cert(rogue, folder, "rogue"), "MTLSPEER": make_cert(ca, folder, "MTLSPEER"),
            "OTHERCN": make_cert(ca, folder, "OTHERCN"), "PEERA": make_cert(ca, folder, "PEERA")}


def tls_args(pair: KeyPair, ca: KeyPair) -> tuple[str, ...]:
    return ("+tls", str(pair.key), str(pair.cert), "+cf", str(ca.cert))


@pytest.fixture
def tls_scp(start_scp_with: StartScp, pki: dict[str, KeyPair]):  # type: ignore[no-untyped-def]
    return start_scp_with(plain_port_enabled=False, tls_port=free_port(), tls_cert_file=pki["node"].cert,
                          tls_key_file=pki["node"].key, tls_ca_file=pki["ca"].cert)


def security_alerts(scp) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    with scp.sessions() as session:
        rows = session.scalars(select(AuditRecord).where(AuditRecord.event == "association_rejected"))
        return [json.loads(r.detail) for r in rows]


def test_mutual_tls_peer_is_served(tls_scp, pki: dict[str, KeyPair]) -> None:  # type: ignore[no-untyped-def]
    result = echoscu(tls_scp.settings.tls_port, called="DICOMNODE", calling="STORESCU",
                     extra_args=tls_args(pki["pacs"], pki["ca"]))
    assert result.returncode == 0, result.stderr


def test_plain_peer_is_refused_on_the_tls_port(tls_scp, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    result = echoscu(tls_scp.settings.tls_port, called="DICOMNODE", calling="STORESCU")
    assert result.returncode != 0
    # the client can see the handshake fail before the node has written its audit row: poll for it
    alerts = wait_for(lambda: security_alerts(tls_scp), timeout=10, msg="security alert audited")
    logged = [r for r in caplog.records if r.name == "dicomnode.net.tls"]
    assert [(r.levelname, r.getMessage()) for r in logged] == [("WARNING", alerts[0]["reason"])]  # the same words
    assert len(alerts) == 1 and re.fullmatch(r"TLS handshake failed: [A-Z_]+", str(alerts[0]["reason"]))
    assert alerts[0]["reason"] != "TLS handshake failed: None"  # OpenSSL's reason, named
    assert alerts[0]["security_alert"] is True
    assert alerts[0]["address"] == "127.0.0.1"  # who tried


def test_a_client_silent_in_the_handshake_is_cut_off_and_audited(start_scp_with: StartScp,
                                                                 pki: dict[str, KeyPair]) -> None:
    scp = start_scp_with(plain_port_enabled=False, tls_port=free_port(), tls_cert_file=pki["node"].cert,
                         tls_key_file=pki["node"].key, tls_ca_file=pki["ca"].cert, tls_handshake_timeout_seconds=0.5)
    with socket.create_connection(("127.0.0.1", scp.settings.tls_port)) as silent:  # says nothing at all
        alerts = wait_for(lambda: security_alerts(scp), timeout=20, msg="the silent client's handshake audited")
        silent.settimeout(20)
        assert silent.recv(1) == b""  # the node closed it
    assert [a["reason"] for a in alerts] == ["TLS handshake failed: TimeoutError"]


def test_certificate_from_another_ca_is_refused(tls_scp, pki: dict[str, KeyPair]) -> None:  # type: ignore[no-untyped-def]
    result = echoscu(tls_scp.settings.tls_port, called="DICOMNODE", calling="STORESCU",
                     extra_args=tls_args(pki["rogue"], pki["ca"]))
    assert result.returncode != 0
    # the client can see the handshake fail before the node has written its audit row: poll for it
    wait_for(lambda: any("TLS handshake failed" in str(a["reason"]) for a in security_alerts(tls_scp)),
             timeout=10, msg="security alert audited")
    # and the node keeps serving the right peers
    ok = echoscu(tls_scp.settings.tls_port, called="DICOMNODE", calling="STORESCU",
                 extra_args=tls_args(pki["pacs"], pki["ca"]))
    assert ok.returncode == 0, ok.stderr


def test_scu_sends_over_tls(pki: dict[str, KeyPair], tmp_path: Path) -> None:
    settings: Settings = make_settings(tmp_path / "data", tls_cert_file=pki["node"].cert,
                                       tls_key_file=pki["node"].key, tls_ca_file=pki["ca"].cert)
    files = write_series(make_series(n_slices=2), tmp_path / "out")
    with storescp(tmp_path / "received", extra_args=tls_args(pki["pacs"], pki["ca"])) as port:
        peer = Peer(ae_title="STORESCP", host="127.0.0.1", port=port, tls=True)
        assert echo(settings, peer).status == 0
        outcomes = send_files(settings, peer, files)
    assert [o.status for o in outcomes] == [0, 0]
    assert len(list((tmp_path / "received").iterdir())) == 2


def test_scu_refuses_a_pacs_with_an_untrusted_certificate(pki: dict[str, KeyPair], tmp_path: Path) -> None:
    """The node presents a valid client certificate and the PACS asks for none (-ic): only the node's own
    verification of the PACS' certificate can refuse this handshake."""
    settings = make_settings(tmp_path / "data", tls_ca_file=pki["ca"].cert, tls_cert_file=pki["node"].cert,
                             tls_key_file=pki["node"].key)
    with storescp(tmp_path / "received", extra_args=(*tls_args(pki["rogue"], pki["ca"]), "-ic")) as port:
        peer = Peer(ae_title="STORESCP", host="127.0.0.1", port=port, tls=True)
        refused = echo(settings, peer)
        assert refused.status is None and refused.why == (
            f"no TLS connection to 127.0.0.1:{port} (nothing listening, or a failed handshake: a certificate "
            "not trusted, or not accepted)")
    trusted = tmp_path / "trusted"
    with storescp(trusted, extra_args=(*tls_args(pki["pacs"], pki["ca"]), "-ic")) as port:  # the control
        assert echo(settings, Peer(ae_title="STORESCP", host="127.0.0.1", port=port, tls=True)).status == 0


def test_scu_without_a_key_presents_no_certificate(pki: dict[str, KeyPair], tmp_path: Path) -> None:
    """A certificate without its key is not a client identity: the SCU still verifies the PACS and goes
    on without one, to a PACS that asks for none (-ic)."""
    settings = make_settings(tmp_path / "data", tls_ca_file=pki["ca"].cert, tls_cert_file=pki["node"].cert)
    with storescp(tmp_path / "received", extra_args=(*tls_args(pki["pacs"], pki["ca"]), "-ic")) as port:
        assert echo(settings, Peer(ae_title="STORESCP", host="127.0.0.1", port=port, tls=True)).status == 0


@pytest.mark.parametrize("missing", ["tls_cert_file", "tls_key_file"])
def test_the_tls_port_needs_both_certificate_and_key(pki: dict[str, KeyPair], tmp_path: Path, missing: str) -> None:
    files = {"tls_cert_file": pki["node"].cert, "tls_key_file": pki["node"].key}
    settings = make_settings(tmp_path, **{**files, missing: None})
    with pytest.raises(ValueError, match=r"^tls_port needs tls_cert_file and tls_key_file$"):
        server_context(settings, lambda address, reason: None)


# -- mutual TLS bound to identity: a peer names the client certificate it must present --------------------

REFUSED = "Calling AE Title Not Recognized"


@pytest.fixture
def bound_scp(start_scp_with: StartScp, pki: dict[str, KeyPair]):  # type: ignore[no-untyped-def]
    """MTLSPEER is bound by subject CN, PEERA by fingerprint (as openssl prints it); STORESCU is not bound."""
    peers = [Peer(ae_title="STORESCU", host="127.0.0.1"),
             Peer(ae_title="MTLSPEER", host="127.0.0.1", tls_subject_cn="MTLSPEER"),
             Peer(ae_title="PEERA", host="127.0.0.1", tls_sha256=sha256_fingerprint(pki["PEERA"]))]
    return start_scp_with(tls_port=free_port(), tls_cert_file=pki["node"].cert, tls_key_file=pki["node"].key,
                          tls_ca_file=pki["ca"].cert, peers=peers)


def echo_as(scp, calling: str, pair: KeyPair | None, ca: KeyPair):  # type: ignore[no-untyped-def]
    """echoscu calling as ``calling``: over TLS with ``pair``'s certificate, or on the plain port (None)."""
    if pair is None:
        return echoscu(scp.port, called="DICOMNODE", calling=calling)
    return echoscu(scp.settings.tls_port, called="DICOMNODE", calling=calling, extra_args=tls_args(pair, ca))


def refused(result) -> bool:  # type: ignore[no-untyped-def]
    return bool(result.returncode != 0 and REFUSED in result.stdout + result.stderr)


def test_a_certificate_bound_by_common_name_speaks_for_its_peer_only(bound_scp, pki: dict[str, KeyPair]) -> None:  # type: ignore[no-untyped-def]
    right = echo_as(bound_scp, "MTLSPEER", pki["MTLSPEER"], pki["ca"])
    assert right.returncode == 0, right.stderr
    # a certificate the same CA signed for someone else speaks neither as MTLSPEER nor as PEERA
    assert refused(echo_as(bound_scp, "MTLSPEER", pki["OTHERCN"], pki["ca"]))
    assert refused(echo_as(bound_scp, "PEERA", pki["OTHERCN"], pki["ca"]))
    # both from one address: one burst, whatever AE title each claimed; its first row names the first
    (impostor,) = security_alerts(bound_scp)
    assert (impostor["reason"], impostor["security_alert"], impostor["burst"], impostor["calling_ae"]) == (
        "calling AE title 'MTLSPEER' is bound to a TLS client certificate; another client certificate was "
        "presented", True, "first", "MTLSPEER")
    # an unbound peer is served with any certificate the CA signed, as before
    assert echo_as(bound_scp, "STORESCU", pki["OTHERCN"], pki["ca"]).returncode == 0


def test_a_certificate_bound_by_fingerprint_speaks_for_its_peer_only(bound_scp, pki: dict[str, KeyPair]) -> None:  # type: ignore[no-untyped-def]
    right = echo_as(bound_scp, "PEERA", pki["PEERA"], pki["ca"])
    assert right.returncode == 0, right.stderr
    # another certificate of the same CA, even one that is itself bound (to MTLSPEER), is not PEERA's
    assert refused(echo_as(bound_scp, "PEERA", pki["MTLSPEER"], pki["ca"]))
    assert refused(echo_as(bound_scp, "PEERA", pki["OTHERCN"], pki["ca"]))
    # two refusals of one kind from one address: one burst, its first row written at once
    assert [(a["reason"], a["burst"]) for a in security_alerts(bound_scp)] == [
        ("calling AE title 'PEERA' is bound to a TLS client certificate; another client certificate was presented",
         "first")]


def test_a_bound_peer_is_refused_without_tls(bound_scp, pki: dict[str, KeyPair]) -> None:  # type: ignore[no-untyped-def]
    assert refused(echo_as(bound_scp, "MTLSPEER", None, pki["ca"]))
    (alert,) = security_alerts(bound_scp)
    assert alert["reason"] == ("calling AE title 'MTLSPEER' is bound to a TLS client certificate; no client "
                               "certificate was presented")
    assert echo_as(bound_scp, "STORESCU", None, pki["ca"]).returncode == 0  # the plain port still serves


def test_a_stored_peer_is_bound_to_its_certificate(bound_scp, pki: dict[str, KeyPair]) -> None:  # type: ignore[no-untyped-def]
    """Peers added at run time (admin API, console, CLI) name their certificate as configured ones do."""
    with session_scope(bound_scp.sessions) as session:
        put_peer(session, Peer(ae_title="RUNTIME", host="127.0.0.1",
                               tls_sha256=sha256_fingerprint(pki["OTHERCN"]).replace(":", "").lower()),
                 user="admin", address="127.0.0.1")
    assert echo_as(bound_scp, "RUNTIME", pki["OTHERCN"], pki["ca"]).returncode == 0
    assert refused(echo_as(bound_scp, "RUNTIME", pki["MTLSPEER"], pki["ca"]))
    assert refused(echo_as(bound_scp, "RUNTIME", None, pki["ca"]))
