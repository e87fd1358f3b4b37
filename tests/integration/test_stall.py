"""One client must not stall the node for everyone: each case runs while a known modality stores.

Reproduces the reviewer's measurements: a TLS connection that never handshakes, idle TCP connections
that never send an A-ASSOCIATE-RQ, a deflate bomb, an oversized instance. In each, a known peer's
C-STORE must still complete within a second (or, on a machine too busy for that to mean anything, within
ten times the same store unattacked, measured before the attack and, if the machine grew busier meanwhile,
after it: a stall, the defect, is a 30 s timeout).
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]
from sqlalchemy import select

from dicomnode.audit.models import AuditRecord
from dicomnode.jobs.models import Instance
from dicomnode.receive.incoming import INCOMING
from tests.integration.conftest import RunningScp, StartScp
from tests.support.certs import KeyPair, make_ca, make_cert
from tests.support.children import dies_with_us
from tests.support.net import free_port, listen_backlog, wait_for
from tests.support.peers import DCMTK_ENV, require
from tests.support.spooled import spool_entries
from tests.support.synthetic import make_series

WITHIN = 1.0  # seconds a known modality may take to store one instance while the node is under attack
SLOWER = 10  # ... or this many times an unattacked store just before, if the machine is that loaded


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeyPair]:
    folder = tmp_path_factory.mktemp("pki")
    ca = make_ca(folder, "hospital-ca")
    return {"ca": ca, "node": make_cert(ca, folder, "node"), "pacs": make_cert(ca, folder, "pacs")}


def store_one(port: int, ssl_context: ssl.SSLContext | None = None, ds: Dataset | None = None,
              transfer_syntax: str = ExplicitVRLittleEndian) -> tuple[int | None, float]:
    """One C-STORE from the known peer PYSCU: (status or None when aborted, seconds taken)."""
    ds = ds if ds is not None else make_series(n_slices=1, rows=8, columns=8)[0]
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(MRImageStorage, transfer_syntax)
    started = time.perf_counter()
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE",
                         tls_args=(ssl_context, None) if ssl_context else None)
    if not assoc.is_established:
        return None, time.perf_counter() - started
    try:
        status = assoc.send_c_store(ds)
        code = int(status.Status) if "Status" in status else None
    finally:
        if assoc.is_established:
            assoc.release()
    return code, time.perf_counter() - started


def allowance(port: int, ssl_context: ssl.SSLContext | None = None) -> float:
    """Seconds a store may take under attack: :data:`WITHIN`, or :data:`SLOWER` times the median of three
    stores before the attack when this machine is so busy that one second means nothing (a stall, the
    defect, is the 30 s of a timeout)."""
    seconds = []
    for _ in range(3):
        status, taken = store_one(port, ssl_context)
        assert status == 0x0000
        seconds.append(taken)
    return max(WITHIN, SLOWER * sorted(seconds)[1])


def assert_no_stall(port: int, taken: list[float], limit: float, ssl_context: ssl.SSLContext | None = None) -> None:
    """Every store under attack within ``limit`` (:func:`allowance` before the attack). Where one was not,
    the machine may have grown busier during the attack (other suites on its cores): the allowance is
    measured again now, after the attack, and the larger one holds. A stall is not excused: the node
    answers at once after the attack, and the stall under it was the 30 s of a timeout."""
    if max(taken) >= limit:
        limit = max(limit, allowance(port, ssl_context))
    assert max(taken) < limit, f"stores under attack took {[round(s, 2) for s in taken]} s (limit {limit:.2f} s)"


@dataclass
class Attack:
    process: subprocess.Popen[str]
    output: str = ""


@contextmanager
def attacker(port: int, ds: Dataset, folder: Path, *args: str) -> Iterator[Attack]:
    """DCMTK's storescu sending ``ds`` from a file, in a process of its own as an attacker's would be: its
    encoding (48 MiB deflated, for the bomb) costs its own CPU, not the known modality's client here.
    ``output`` is storescu's (verbose) once it has ended."""
    path = folder / "attack.dcm"
    ds.save_as(path, enforce_file_format=True)
    process = subprocess.Popen([require("storescu"), "-v", "-aet", "STORESCU", "-aec", "DICOMNODE", *args,
                                "127.0.0.1", str(port), str(path)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=DCMTK_ENV,
                               **dies_with_us())
    attack = Attack(process)
    try:
        yield attack
    finally:
        if process.poll() is None:
            process.kill()
        attack.output = process.communicate(timeout=60)[0]


def stores_while(port: int, attack: Attack, at_least: int = 3) -> list[float]:
    """The known modality stores, one after another, until the attacker has ended (and at least ``at_least``
    times): some of them while the node handles the attack, whenever it reaches the node. Their seconds."""
    taken: list[float] = []
    deadline = time.monotonic() + 120
    while (attack.process.poll() is None or len(taken) < at_least) and time.monotonic() < deadline:
        status, seconds = store_one(port)
        assert status == 0x0000
        taken.append(seconds)
    return taken


@contextmanager
def idle_connections(port: int, count: int) -> Iterator[list[socket.socket]]:
    """``count`` TCP connections that send nothing at all."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.create_connection(("127.0.0.1", port))) for _ in range(count)]
        yield socks


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def refusals(scp: RunningScp) -> list[dict[str, object]]:
    with scp.sessions() as session:
        rows = session.scalars(select(AuditRecord).where(AuditRecord.event == "instance_refused"))
        return [json.loads(r.detail) for r in rows]


def test_a_silent_tls_client_stalls_nobody(start_scp_with: StartScp, pki: dict[str, KeyPair]) -> None:
    scp = start_scp_with(plain_port_enabled=False, tls_port=free_port(), tls_cert_file=pki["node"].cert,
                         tls_key_file=pki["node"].key, tls_ca_file=pki["ca"].cert, tls_handshake_timeout_seconds=2)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki["ca"].cert))
    client.check_hostname = False
    client.load_cert_chain(pki["pacs"].cert, pki["pacs"].key)
    port = scp.settings.tls_port
    assert port is not None
    limit, taken = allowance(port, client), []
    with idle_connections(port, 3) as silent:
        for _ in range(3):
            status, seconds = store_one(port, client)
            assert status == 0x0000
            taken.append(seconds)
        started = time.monotonic()
        assert all(closed_by_peer(s, timeout=10) for s in silent)
        assert time.monotonic() - started < 5  # cut off after tls_handshake_timeout_seconds (2 s)
    assert_no_stall(port, taken, limit, client)


def test_a_burst_of_connections_is_queued_not_dropped(start_scp_with: StartScp, pki: dict[str, KeyPair]) -> None:
    # with socketserver's backlog of 5, ten connections opened while the accept loop was busy overflowed the
    # queue and the kernel dropped the next SYN: the known modality's store waited a second for its retry
    scp = start_scp_with(tls_port=free_port(), tls_cert_file=pki["node"].cert, tls_key_file=pki["node"].key,
                         tls_ca_file=pki["ca"].cert)
    assert scp.settings.tls_port is not None
    for port in (scp.port, scp.settings.tls_port):
        assert listen_backlog(port) >= 128, port


def test_idle_connections_take_no_association_slot(start_scp_with: StartScp) -> None:
    scp = start_scp_with(max_associations=2, first_pdu_timeout_seconds=2)
    limit, taken = allowance(scp.port), []
    with idle_connections(scp.port, 10) as idle:
        for _ in range(3):
            status, seconds = store_one(scp.port)
            assert status == 0x0000
            taken.append(seconds)
        started = time.monotonic()
        assert all(closed_by_peer(s, timeout=10) for s in idle)
        assert time.monotonic() - started < 5  # closed after first_pdu_timeout_seconds (2 s)
    assert_no_stall(scp.port, taken, limit)


def test_a_half_sent_association_request_is_closed_too(start_scp_with: StartScp) -> None:
    # 4 half-sent requests would take both slots if each took one; and a slot is freed only once the node has
    # closed the association (its audit row written), which may come after the next store asks for one
    scp = start_scp_with(max_associations=2, first_pdu_timeout_seconds=2)
    limit = allowance(scp.port)
    with idle_connections(scp.port, 4) as idle:
        for sock in idle:
            sock.sendall(bytes([0x01, 0x00, 0x00, 0x00, 0x01, 0x00]) + b"\x00" * 10)  # promises 256 bytes
        status, seconds = store_one(scp.port)
        assert status == 0x0000
        assert all(closed_by_peer(s, timeout=10) for s in idle)
    assert_no_stall(scp.port, [seconds], limit)


def _bomb(inflated_mb: int) -> Dataset:
    ds = make_series(n_slices=1, rows=8, columns=8)[0]
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.Rows, ds.Columns = 1024, inflated_mb * 512  # 16-bit zeros: inflated_mb MiB that deflate to ~1/1000
    ds.PixelData = bytes(inflated_mb * 2**20)
    return ds


def test_deflate_bomb_is_refused_with_bounded_inflation(start_scp_with: StartScp, tmp_path: Path) -> None:
    scp = start_scp_with(max_inflated_mb=4, max_instance_mb=64)
    limit = allowance(scp.port)
    with attacker(scp.port, _bomb(48), tmp_path, "-xd") as attack:
        taken = stores_while(scp.port, attack)
    assert "Refused: OutOfResources" in attack.output, attack.output  # DCMTK's words for 0xA7xx
    assert any(r["status"] == "0xA700" and "max_inflated_mb" in str(r["reason"]) for r in refusals(scp))
    with scp.sessions() as session:  # only the known modality's (3 before, the rest during)
        assert len(session.scalars(select(Instance)).all()) == 3 + len(taken)
    assert_no_stall(scp.port, taken, limit)


def test_a_small_deflated_instance_is_still_accepted(start_scp_with: StartScp) -> None:
    scp = start_scp_with(max_inflated_mb=4)
    ds = make_series(n_slices=1, rows=8, columns=8)[0]
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    assert store_one(scp.port, ds=ds, transfer_syntax=DeflatedExplicitVRLittleEndian)[0] == 0x0000


def _pixels(mib: int) -> Dataset:
    ds = make_series(n_slices=1, rows=8, columns=8)[0]
    ds.Rows, ds.Columns = 1024, mib * 512  # 16-bit zeros: mib MiB of pixels
    ds.PixelData = bytes(mib * 2**20)
    return ds


def test_an_instance_over_the_limit_gets_0xa700_and_an_audit_row(start_scp_with: StartScp) -> None:
    scp = start_scp_with(max_instance_mb=2)
    status, _ = store_one(scp.port, ds=_pixels(3))  # arrives whole (into a file), then refused
    assert status == 0xA700
    (row,) = refusals(scp)
    assert (row["status"], "max_instance_mb=2" in str(row["reason"])) == ("0xA700", True)
    with scp.sessions() as session:
        assert session.scalars(select(Instance)).all() == []
    assert spool_entries(scp.settings) == []  # its incoming file is gone too
    assert store_one(scp.port)[0] == 0x0000  # and the node serves on


def test_an_instance_far_over_the_limit_is_cut_off_while_it_arrives(start_scp_with: StartScp,
                                                                     tmp_path: Path) -> None:
    scp = start_scp_with(max_instance_mb=2)
    limit = allowance(scp.port)
    with attacker(scp.port, _pixels(6), tmp_path) as attack:
        taken = stores_while(scp.port, attack)
    assert "Store Response" not in attack.output, attack.output  # aborted past twice the limit: never acknowledged
    wait_for(lambda: any("twice max_instance_mb=2" in str(r["reason"]) for r in refusals(scp)), timeout=10,
             msg="oversized instance audited")
    with scp.sessions() as session:  # the known modality's: 3 before, the rest during
        assert len(session.scalars(select(Instance)).all()) == 3 + len(taken)
    assert_no_stall(scp.port, taken, limit)
    wait_for(lambda: not [p for p in spool_entries(scp.settings) if p.parent.name == INCOMING], timeout=10,
             msg="the cut-off dataset's incoming file removed")
    assert store_one(scp.port)[0] == 0x0000  # and the node serves on
