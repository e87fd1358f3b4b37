"""README promises that no other test held to their stated value (docs/testing.md, "Promises and the tests
that keep them"): each test asserts the value the documentation gives, so that a changed default, a dropped
argument or a removed line fails here."""

from __future__ import annotations

import os
import ssl
import stat
import threading
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from dicomnode.db import make_engine
from dicomnode.inference.registry import Registry, RuntimeOptions
from dicomnode.net.tls import client_context, server_context
from dicomnode.receive.accept import CALLING_AE_NOT_RECOGNISED, decide
from dicomnode.results.files import write_results
from dicomnode.settings import Peer, Settings
from tests.conftest import make_settings
from tests.support.certs import make_ca, make_cert
from tests.support.models import write_threshold_model
from tests.support.net import holds_for, wait_for
from tests.support.synthetic import make_series

MIB = 2**20


def test_readme_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each default the README (Quick start, Limits, Instance size, Audit, Admin API, DICOMweb) states."""
    monkeypatch.chdir(tmp_path)
    settings = Settings.load(None)
    assert (settings.ae_title, settings.port) == ("DICOMNODE", 11112)  # Quick start
    assert settings.require_known_callers is True  # "It accepts only known peers"
    data = Path("./data").resolve()  # "SQLite and the spool under ./data"
    assert settings.data_dir.resolve() == data
    assert settings.db_url == f"sqlite:///{data / 'dicomnode.db'}"
    assert settings.spool_dir.resolve().parent == data
    assert settings.models_dir == Path(__file__).resolve().parents[2] / "models"  # the bundled models
    assert settings.audit_anchor_seconds == 60  # "every audit_anchor_seconds (60)"
    assert settings.anchor_path.resolve() == data / "audit-anchor.jsonl"  # "The default, data_dir/audit-anchor.jsonl"
    assert settings.max_instance_mb == 1024  # "max_instance_mb (default 1024 MiB)"
    assert settings.max_associate_rq_bytes == 256 * 1024  # "max_associate_rq_bytes (256 KiB)"
    assert settings.dicomweb_max_body_bytes == 2 * 1024 * MIB  # "dicomweb_max_body_bytes (default 2 GiB)"
    assert settings.admin_host == "127.0.0.1"  # "It binds to 127.0.0.1 by default"
    assert settings.admin_docs is False  # "/docs ... only with admin_docs = true: off by default"
    assert settings.admin_trusted_proxies == []  # "empty by default"
    assert settings.admin_public_origin == ""  # "default http://admin_host:admin_port"
    assert settings.failure_notice is True  # a failure notice goes into the study


def test_sqlite_commits_are_fsynced_synchronous_full(tmp_path: Path) -> None:
    """README, Receive: "SQLite keeps synchronous=FULL: a commit survives a power cut" (NORMAL would not)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'node.db'}")
    try:
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    finally:
        engine.dispose()


def test_dicom_tls_is_tls_1_2_or_later_both_ways(tmp_path: Path) -> None:
    """README, DICOM TLS: "BCP 195, TLS 1.2+", for the SCP's port and the SCU. Asserted on the contexts:
    Debian's OpenSSL refuses TLS 1.1 by its own configuration, so a real old client would be refused even
    without the node's setting, and could not tell it is missing."""
    ca = make_ca(tmp_path, "ca")
    node = make_cert(ca, tmp_path, "node")
    settings = make_settings(tmp_path / "data", tls_port=2762, tls_cert_file=node.cert, tls_key_file=node.key,
                             tls_ca_file=ca.cert)
    server = server_context(settings, lambda _address, _reason: None)
    client = client_context(settings)
    defaults = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).options  # OpenSSL's own hardening (OP_ALL, no SSLv3, ...)
    for context in (server, client):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
        assert context.options & ssl.OP_NO_COMPRESSION
        assert context.options & defaults == defaults  # added to, never replaced
    assert server.verify_mode == ssl.CERT_REQUIRED  # tls_ca_file set: mutual TLS
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname


def test_inference_threads_reach_each_onnx_session(tmp_path: Path) -> None:
    """README, Infer: "inference_threads ... bound each model" (threads per ONNX Runtime session)."""
    models = write_threshold_model(tmp_path / "models", 40.0).parent
    registry = Registry(models, options=RuntimeOptions(device="cpu", threads=3))
    model = registry.get("threshold-test")
    session = model._network._session  # type: ignore[attr-defined]  # the ONNX Runtime session itself
    assert session.get_session_options().intra_op_num_threads == 3
    assert session.get_session_options().inter_op_num_threads == 1


class _Gate:
    """In place of the loaded model: counts the runs inside it and holds them until released."""

    def __init__(self, model: object) -> None:
        self.model = model
        self.manifest = model.manifest  # type: ignore[attr-defined]
        self.device = "cpu"
        self.inside = 0
        self.most = 0
        self.lock = threading.Lock()
        self.release = threading.Event()

    def run(self, image: object) -> object:
        with self.lock:
            self.inside += 1
            self.most = max(self.most, self.inside)
        try:
            self.release.wait(30)
            return image
        finally:
            with self.lock:
                self.inside -= 1


@pytest.mark.parametrize("concurrency", [1, 2])
def test_inference_concurrency_bounds_each_model(tmp_path: Path, concurrency: int) -> None:
    """README, Infer: "inference_concurrency ... bound each model": at most that many runs of one model at once."""
    models = write_threshold_model(tmp_path / "models", 40.0).parent
    registry = Registry(models, options=RuntimeOptions(device="cpu", concurrency=concurrency))
    gate = _Gate(registry.get("threshold-test"))
    registry._loaded["threshold-test"] = gate  # type: ignore[assignment]  # loaded for real, then counted
    image = np.zeros((4, 4, 4), dtype=np.float32)
    threads = [threading.Thread(target=registry.run, args=("threshold-test", image), daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: gate.inside == concurrency, timeout=10, msg=f"{concurrency} runs inside the model")
        assert holds_for(lambda: gate.inside == concurrency, seconds=0.5)  # and no more get in
    finally:
        gate.release.set()
        for thread in threads:
            thread.join(30)
    assert gate.most == concurrency


def test_result_files_are_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    """README, Audit: "The database, spool, results and exports are created owner-only". Under a umask that
    masks nothing only the explicit modes count (the CLI's own umask is held by e2e/test_promises.py)."""
    previous = os.umask(0)
    try:
        result = write_results(tmp_path / "results", 7, [make_series(n_slices=1)[0]], {"x": 1.0}, 0.1, "done")
    finally:
        os.umask(previous)
    (path,) = result.paths
    written = [path, path.parent / "results.json"]
    assert [stat.S_IMODE(p.stat().st_mode) for p in written] == [0o600, 0o600]
    assert [stat.S_IMODE(p.stat().st_mode) for p in (path.parent, path.parent.parent)] == [0o700, 0o700]


@pytest.mark.parametrize(("host", "address", "accepted"), [
    ("localhost", "127.0.0.1", True),  # a host name: the addresses it resolves to
    ("localhost", "10.9.8.7", False),
    ("no-such-host.invalid", "127.0.0.1", False),  # a name that resolves to nothing binds to nothing
])
def test_a_peer_bound_to_a_host_name_is_accepted_only_from_its_addresses(host: str, address: str,
                                                                         accepted: bool) -> None:
    """README, Peers: a configured peer, "optionally bound to a host or network"; a peer's host may be a
    host name (RFC 1123). A name that does not resolve must not let the AE title in from anywhere."""
    decision = decide(own_ae="DICOMNODE", called_ae="DICOMNODE", calling_ae="CT1", address=address,
                      peers=(Peer(ae_title="CT1", host=host),), require_known=True)
    assert decision.accepted is accepted
    if not accepted:
        assert decision.diagnostic == CALLING_AE_NOT_RECOGNISED


def test_an_unknown_configuration_key_stops_the_node(tmp_path: Path) -> None:
    """docs/deploy.md, Upgrades: "an unknown key stops the node at start instead of being ignored" (a typo
    such as `max_instance_mbs` would otherwise leave the default in force, silently)."""
    config = tmp_path / "node.toml"
    config.write_text('ae_title = "NODE"\nmax_instance_mbs = 10\n')
    with pytest.raises(ValueError, match="max_instance_mbs"):
        Settings.load(config)
