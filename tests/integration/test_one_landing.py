"""One landing path (issue 23): C-STORE and STOW-RS give the same status, file, row and audit for the same
inputs, because both land through :class:`dicomnode.store.landing.Landing`.

Two nodes, each with its own database and spool, get the same sequence of instances: one by C-STORE (raw
PDUs over a real socket, on both receive engines), the other by STOW-RS (a real HTTP request per instance,
each part the Part-10 file the C-STORE data phase writes for that instance: preamble, the file meta
pynetdicom writes, the dataset as sent). The sequence: a good instance, the same again, another patient's
instance under the same study UID (a collision), pixel data cut short, an instance larger than
``max_instance_mb``, and a good one of a second study. Then the two nodes' statuses, spool files (byte for
byte), instance rows and audit trails (less who sent what, and how) must be equal.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmwrite
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.admin.auth import hash_password
from dicomnode.audit.models import AuditRecord
from dicomnode.db import make_engine, make_sessionmaker
from dicomnode.jobs.models import Instance, Series, Study
from dicomnode.migrate import upgrade
from dicomnode.net.multipart import encode_related
from dicomnode.receive.dataphase.native import _file_meta
from dicomnode.receive.handlers import ReceiveContext
from dicomnode.receive.scp import start_scp
from dicomnode.settings import AdminUser, Peer, Settings
from tests.conftest import make_settings
from tests.support.admin import admin_server, call, login
from tests.support.net import free_port, wait_for
from tests.support.rawdicom import store
from tests.support.synthetic import make_series

MR = str(MRImageStorage)
USERS = [AdminUser(name="edge-a", password_hash=hash_password("sender-pass", 1000), role="sender")]
PEERS = [Peer(ae_title="PYSCU", host="127.0.0.1"), Peer(ae_title="STORESCU", host="127.0.0.1")]


@dataclass(frozen=True)
class Sent:
    uid: str
    body: bytes  # the dataset, explicit VR little endian, as sent


def _body(ds: Dataset) -> bytes:
    buffer = BytesIO()
    dcmwrite(buffer, Dataset(ds), implicit_vr=False, little_endian=True)
    return buffer.getvalue()


def _image(study_uid: str, patient_id: str, rows: int = 64, *, cut: int = 0) -> Sent:
    ds = make_series(n_slices=1, rows=rows, columns=rows)[0]
    ds.StudyInstanceUID, ds.PatientID = study_uid, patient_id
    ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
    ds.PixelData = bytes(rows * rows * 2)
    body = _body(ds)
    return Sent(str(ds.SOPInstanceUID), body[:len(body) - cut] if cut else body)


def _sequence() -> list[tuple[str, Sent]]:
    first, second = generate_uid(), generate_uid()
    good = _image(first, "SYN-A")
    return [
        ("good", good),
        ("duplicate", good),
        ("collision: another patient under the same study UID", _image(first, "SYN-B")),
        ("truncated pixel data", _image(first, "SYN-A", cut=1000)),
        ("larger than max_instance_mb", _image(first, "SYN-A", rows=800)),  # 1.28 MB over a 1 MB limit
        ("good, a second study", _image(second, "SYN-C")),
    ]


@dataclass
class Node:
    settings: Settings
    sessions: sessionmaker[Session]


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator[Callable[[str], Node]]:
    engines = []

    def make(name: str, **overrides: Any) -> Node:
        settings = make_settings(tmp_path / name, min_free_disk_mb=1, max_instance_mb=1, **overrides)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        upgrade(settings.db_url)
        engine = make_engine(settings.db_url)
        engines.append(engine)
        return Node(settings, make_sessionmaker(engine))

    yield make
    for engine in engines:
        engine.dispose()


def _c_store(node: Node, engine: str, sequence: list[tuple[str, Sent]]) -> list[int | None]:
    settings = node.settings.model_copy(update={"host": "127.0.0.1", "port": free_port(), "peers": PEERS,
                                                "receive_engine": engine})
    servers = start_scp(ReceiveContext(settings=settings, sessions=node.sessions))
    try:
        return [store(settings.port, MR, sent.uid, sent.body, transfer_syntax=ExplicitVRLittleEndian)
                for _, sent in sequence]
    finally:
        for server in servers:
            server.shutdown()


def _stow(node: Node, sequence: list[tuple[str, Sent]]) -> list[int | None]:
    settings = node.settings.model_copy(update={"admin_port": free_port(), "admin_users": USERS})
    statuses: list[int | None] = []
    with admin_server(settings, node.sessions) as url:
        token = login(url, "edge-a", "sender-pass")
        for _, sent in sequence:
            body, content_type = encode_related([_file_meta(MR, sent.uid, ExplicitVRLittleEndian) + sent.body])
            http, answer = call(url, "POST", "/dicomweb/studies", token=token, raw=body,
                                headers={"Content-Type": content_type, "Accept": "application/dicom+json"})
            response = Dataset.from_json(json.dumps(answer))
            failed = response.get("FailedSOPSequence", [])
            statuses.append(int(failed[0].FailureReason) if failed else 0)
            assert http == (409 if failed else 200), (http, answer)
    return statuses


def _files(node: Node) -> dict[str, bytes]:
    spool = node.settings.spool_dir
    return {str(p.relative_to(spool)): p.read_bytes() for p in spool.rglob("*") if p.is_file()}


def _rows(node: Node) -> list[tuple[Any, ...]]:
    spool = str(node.settings.spool_dir)
    with node.sessions() as session:
        rows = session.execute(select(Study.study_uid, Study.patient_id, Series.series_uid, Instance.sop_instance_uid,
                                      Instance.sop_class_uid, Instance.transfer_syntax_uid, Instance.path,
                                      Instance.size, Instance.sha256)
                               .join(Series, Instance.series_id == Series.id).join(Study, Series.study_id == Study.id)
                               .order_by(Instance.sop_instance_uid))
        return [(*row[:6], row[6].removeprefix(spool), *row[7:]) for row in rows]


SENDER = ("actor", "address", "calling_ae", "transport")  # who sent it, and how: the two nodes' differ


def _trail(node: Node) -> list[tuple[Any, ...]]:
    """The audit rows of the instances (receipts and refusals), less who sent them and how."""
    with node.sessions() as session:
        rows = session.scalars(select(AuditRecord).where(AuditRecord.event.in_(
            ["instances_received", "instance_refused", "study_not_owned", "study_transfer_started"]))
            .order_by(AuditRecord.id))
        return [(row.event, row.outcome, row.study_uid, row.patient_id,
                 {k: v for k, v in json.loads(row.detail).items() if k not in SENDER}) for row in rows]


@pytest.mark.parametrize("engine", ["native", "pynetdicom"])
def test_c_store_and_stow_land_alike(make_node: Callable[..., Node], engine: str) -> None:
    sequence = _sequence()
    by_c_store, by_stow = make_node("c-store"), make_node("stow")

    c_store = _c_store(by_c_store, engine, sequence)
    stow = _stow(by_stow, sequence)

    expected = [0x0000, 0x0000, 0xC213, 0xC210, 0xA700, 0x0000]
    assert dict(zip([name for name, _ in sequence], c_store, strict=True)) == dict(
        zip([name for name, _ in sequence], expected, strict=True))
    assert stow == c_store
    files = _files(by_c_store)
    assert len(files) == 2 and not any(name.startswith(".incoming") for name in files)
    assert _files(by_stow) == files  # the same paths, byte for byte
    rows = _rows(by_c_store)
    assert [row[3] for row in rows] == sorted([sequence[0][1].uid, sequence[-1][1].uid])
    assert _rows(by_stow) == rows
    # receipts are audited when the association ends: poll for the last one
    wait_for(lambda: len(_trail(by_c_store)) == len(_trail(by_stow)), timeout=30,
             msg="both trails hold every receipt")
    trail = _trail(by_c_store)
    assert trail == _trail(by_stow)
    refused = [(detail["status"], detail.get("security_alert", False)) for event, _, _, _, detail in trail
               if event == "instance_refused"]
    assert refused == [("0xC213", True), ("0xC210", False), ("0xA700", False)]
    receipts = [(detail["instances"], detail["unchanged"]) for event, _, _, _, detail in trail
                if event == "instances_received"]
    assert receipts == [(1, 0), (1, 1), (1, 0)]
