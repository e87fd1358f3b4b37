"""The SCP over real loopback sockets, driven by DCMTK (a foreign SCU) and pynetdicom."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import config, dcmread, dcmwrite
from pydicom.dataset import Dataset
from pydicom.filewriter import write_file_meta_info
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]
from sqlalchemy import select, text

from dicomnode.audit.models import AuditRecord
from dicomnode.jobs.models import Instance, Study
from tests.integration.conftest import RunningScp, StartScp
from tests.support.cli import run_cli
from tests.support.net import wait_for
from tests.support.peers import echoscu, storescp, storescu
from tests.support.spooled import spool_entries
from tests.support.synthetic import make_series, write_series


def _audit(scp: RunningScp, event: str) -> list[AuditRecord]:
    with scp.sessions() as session:
        return list(session.scalars(select(AuditRecord).where(AuditRecord.event == event)))


def _dataset_bytes(path: Path) -> bytes:
    """The encoded dataset after preamble and file meta: what travelled over the wire."""
    ds = dcmread(path, stop_before_pixels=True)
    raw = path.read_bytes()
    meta_end = 132 + 12 + int(ds.file_meta.FileMetaInformationGroupLength)
    return raw[meta_end:]


def test_echo_from_known_peer_and_audit(scp: RunningScp) -> None:
    result = echoscu(scp.port, called="DICOMNODE", calling="STORESCU")
    assert result.returncode == 0, result.stderr
    assert [a.actor for a in _audit(scp, "association_accepted")] == ["STORESCU"]


def test_unknown_calling_ae_is_rejected_and_audited(scp: RunningScp, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="dicomnode.receive.handlers")
    result = echoscu(scp.port, called="DICOMNODE", calling="INTRUDER")
    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stderr + result.stdout
    (row,) = _audit(scp, "association_rejected")
    assert row.actor == "INTRUDER" and row.outcome == "minor_failure"
    assert json.loads(row.detail)["security_alert"] is True
    reason = "calling AE title 'INTRUDER' is not a known peer"
    assert json.loads(row.detail)["reason"] == reason
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("association rejected")] == [
        f"association rejected: {reason}"]  # the log says why, as the audit row does
    assert echoscu(scp.port, called="DICOMNODE", calling="STORESCU").returncode == 0  # still serving


def test_wrong_called_ae_is_rejected(scp: RunningScp) -> None:
    result = echoscu(scp.port, called="NOTME", calling="STORESCU")
    assert result.returncode != 0
    assert "Called AE Title Not Recognized" in result.stderr + result.stdout


def test_storescu_series_lands_in_spool_and_database(scp: RunningScp, tmp_path: Path) -> None:
    paths = write_series(make_series(n_slices=5), tmp_path / "in")
    result = storescu(scp.port, tmp_path / "in", called="DICOMNODE")
    assert result.returncode == 0, result.stderr
    with scp.sessions() as session:
        instances = session.scalars(select(Instance)).all()
        study = session.scalars(select(Study)).one()
    assert len(instances) == 5
    assert study.state.value == "receiving" and study.calling_ae == "STORESCU"
    by_uid = {i.sop_instance_uid: i for i in instances}
    for path in paths:
        sent = dcmread(path)
        stored = Path(by_uid[sent.SOPInstanceUID].path)
        assert stored.is_relative_to(scp.settings.spool_dir)
        assert _dataset_bytes(stored) == _dataset_bytes(path)
        assert stored.stat().st_mode & 0o077 == 0  # PHI: owner-only
    (row,) = wait_for(lambda: _audit(scp, "instances_received"), timeout=10, msg="the association's receipt row")
    detail = json.loads(row.detail)  # one row per association and study, not one per instance
    assert (row.actor, detail["instances"], detail["unchanged"]) == ("STORESCU", 5, 0)
    assert detail["sop_classes"] == {MRImageStorage: 5}


@pytest.mark.parametrize(("folder", "propose"), [
    ("mr_knix_loc_jpeg_lossless", "-xs"),     # JPEG Lossless SV1
    ("mr_knee_2series_j2k_lossy/T1", "-xw"),  # JPEG 2000 (lossy)
    ("ct_comunix_3slice_j2k", "-xw"),         # JPEG 2000, CT
    ("multiframe", "-xy"),                    # JPEG baseline US cine + uncompressed Enhanced MR
])
def test_compressed_instances_are_stored_byte_for_byte(
    scp: RunningScp, shared_data: Path, tmp_path: Path, folder: str, propose: str
) -> None:
    """What the node stores equals, byte for byte, what DCMTK's storescp keeps in bit-preserving mode."""
    files = sorted(p for p in (shared_data / folder).rglob("*") if p.is_file())
    reference = tmp_path / "storescp"
    with storescp(reference, extra_args=("+B", "+xa")) as ref_port:  # +B: keep bytes as received
        # propose the files' own compressed syntax, so that DCMTK sends them as they are
        for port, called in ((scp.port, "DICOMNODE"), (ref_port, "STORESCP")):
            result = storescu(port, files, called=called, extra_args=(propose,))
            assert result.returncode == 0, result.stderr
    with scp.sessions() as session:
        stored = {i.sop_instance_uid: i for i in session.scalars(select(Instance))}
    received = {dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in reference.iterdir()}
    assert len(stored) == len(files) == len(received)
    for path in files:
        sent = dcmread(path, stop_before_pixels=True)
        row, reference_file = stored[sent.SOPInstanceUID], received[sent.SOPInstanceUID]
        assert row.transfer_syntax_uid == dcmread(reference_file, stop_before_pixels=True).file_meta.TransferSyntaxUID
        assert _dataset_bytes(Path(row.path)) == _dataset_bytes(reference_file)
        if sent.file_meta.TransferSyntaxUID.is_compressed:  # kept compressed, pixel data untouched
            assert row.transfer_syntax_uid == sent.file_meta.TransferSyntaxUID
            assert dcmread(row.path).PixelData == dcmread(path).PixelData


def test_rle_compressed_series_is_accepted_as_sent(scp: RunningScp, tmp_path: Path) -> None:
    """Compressed syntaxes are accepted, not only pynetdicom's default uncompressed ones (no shared data needed:
    DCMTK's dcmcrle compresses a synthetic series, storescu proposes RLE Lossless only)."""
    files = write_series(make_series(n_slices=3, rows=16, columns=16), tmp_path / "in")
    rle = []
    for path in files:
        out = tmp_path / "rle" / path.name
        out.parent.mkdir(exist_ok=True)
        subprocess.run(["dcmcrle", str(path), str(out)], check=True, capture_output=True)
        rle.append(out)
    result = storescu(scp.port, rle, called="DICOMNODE", extra_args=("-xr",))
    assert result.returncode == 0, result.stderr
    with scp.sessions() as session:
        syntaxes = [i.transfer_syntax_uid for i in session.scalars(select(Instance))]
    assert syntaxes == ["1.2.840.10008.1.2.5"] * 3


@pytest.mark.parametrize("engine", ["native", "pynetdicom"])  # the node's data phase, and SizeGuard
def test_instance_cut_off_while_it_arrives_is_logged_by_stage_without_phi(
    start_scp_with: StartScp, caplog: pytest.LogCaptureFixture, engine: str
) -> None:
    scp = start_scp_with(max_instance_mb=1, receive_engine=engine)
    ds = make_series(n_slices=1, patient_name="ALPHA^SECRET", patient_id="PID-SECRET")[0]
    ds.Rows, ds.Columns = 1024, 1536  # 16-bit zeros: 3 MiB, past twice the limit
    ds.PixelData = bytes(3 * 2**20)
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(MRImageStorage, "1.2.840.10008.1.2.1")
    with caplog.at_level(logging.INFO):
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="DICOMNODE")
        assert assoc.is_established
        answer = assoc.send_c_store(ds)
        assert "Status" not in answer  # aborted, never acknowledged
        wait_for(lambda: [r for r in caplog.records if r.getMessage().startswith("association aborted")],
                 timeout=20, msg="the cut-off logged")
    (logged,) = [r for r in caplog.records if r.getMessage().startswith("association aborted")]
    assert getattr(logged, "ctx", {}).get("stage") == "receive"
    (row,) = wait_for(lambda: _audit(scp, "instance_refused"), timeout=20, msg="the cut-off audited")
    assert re.fullmatch(r"instance larger than twice max_instance_mb=1 \(\d+ MiB received so far\)",
                        json.loads(row.detail)["reason"])
    assert not any(value in caplog.text for value in ("ALPHA", "SECRET", str(ds.StudyInstanceUID)))


def _pyscu_send(port: int, what: Dataset | Path, transfer_syntax: str = "1.2.840.10008.1.2.1") -> int:
    """One C-STORE from the known peer PYSCU: a dataset, or a file's bytes (see ``_send_raw``)."""
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(MRImageStorage, transfer_syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(what).Status)
    finally:
        assoc.release()


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")  # we send it on purpose
def test_invalid_uid_is_refused_without_a_file(scp: RunningScp, caplog: pytest.LogCaptureFixture) -> None:
    ds = make_series(n_slices=1)[0]
    ds.SeriesInstanceUID = "1.2.bad/../../etc"
    with config.disable_value_validation():
        status = _pyscu_send(scp.port, ds)
    assert status == 0xC211
    assert spool_entries(scp.settings) == []
    (logged,) = [r for r in caplog.records if "refused with 0xC211" in r.getMessage()]
    assert logged.getMessage().startswith("C-STORE refused") and getattr(logged, "ctx", {}).get("stage") == "receive"
    # the log names the attribute, never its value (the audit row keeps the reason)
    assert logged.getMessage().endswith(": SeriesInstanceUID missing or not a valid UID")
    assert "bad/" not in caplog.text
    (row,) = _audit(scp, "instance_refused")
    assert "SeriesInstanceUID" in json.loads(row.detail)["reason"]


def test_disk_failure_answers_out_of_resources(scp: RunningScp) -> None:
    ds = make_series(n_slices=1)[0]
    (scp.settings.spool_dir / ds.StudyInstanceUID).write_text("not a folder")  # the landing below it fails
    status = _pyscu_send(scp.port, ds)
    assert status == 0xA700
    assert [p.name for p in spool_entries(scp.settings)] == [ds.StudyInstanceUID]  # no file left incoming
    with scp.sessions() as session:
        assert session.scalars(select(Instance)).all() == []
    (row,) = _audit(scp, "instance_refused")
    assert json.loads(row.detail)["status"] == "0xA700"
    assert echoscu(scp.port, called="DICOMNODE", calling="STORESCU").returncode == 0


def test_disk_guard_refuses_before_the_disk_is_full(start_scp_with: StartScp) -> None:
    scp = start_scp_with(min_free_disk_mb=2**40)  # a petabyte: more than this machine has free
    ds = make_series(n_slices=1)[0]
    status = _pyscu_send(scp.port, ds)
    assert status == 0xA700
    (row,) = _audit(scp, "instance_refused")
    assert "disk guard" in json.loads(row.detail)["reason"]
    assert row.study_uid == ds.StudyInstanceUID  # the refusal names the study it kept out
    assert spool_entries(scp.settings) == []
    status_cli = run_cli(["status", "--json"], {**os.environ, "DICOMNODE_DATA_DIR": str(scp.settings.data_dir),
                                                "DICOMNODE_MIN_FREE_DISK_MB": str(2**40)})
    assert status_cli.returncode == 0, status_cli.stderr
    disk = json.loads(status_cli.stdout)["disk"]
    assert disk["accepting"] is False and "disk guard" in disk["reason"]


def test_association_limit(start_scp_with: StartScp) -> None:
    scp = start_scp_with(max_associations=1)
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(MRImageStorage)
    held = ae.associate("127.0.0.1", scp.port, ae_title="DICOMNODE")
    assert held.is_established
    try:
        result = echoscu(scp.port, called="DICOMNODE", calling="STORESCU")
        assert result.returncode != 0
        assert "Local Limit Exceeded" in result.stderr + result.stdout
    finally:
        held.release()
    # pynetdicom sends the A-ASSOCIATE-RJ, then tells the node (EVT_REJECTED): the row may follow the peer's exit
    wait_for(lambda: any("local limit exceeded" in json.loads(r.detail)["reason"]
                         for r in _audit(scp, "association_rejected")),
             timeout=10, msg="the rejection by the association limit audited")
    (row,) = [r for r in _audit(scp, "association_rejected")
              if "local limit exceeded" in json.loads(r.detail)["reason"]]
    assert (row.actor, json.loads(row.detail)["address"]) == ("STORESCU", "127.0.0.1")  # who, from where
    wait_for(lambda: echoscu(scp.port, called="DICOMNODE", calling="STORESCU").returncode == 0,
             timeout=10, msg="serving again once the held association is released")


def test_resend_of_unchanged_instances_changes_nothing(scp: RunningScp, tmp_path: Path) -> None:
    write_series(make_series(n_slices=3), tmp_path / "in")
    for _ in range(2):
        assert storescu(scp.port, tmp_path / "in", called="DICOMNODE").returncode == 0
    with scp.sessions() as session:
        assert len(session.scalars(select(Instance)).all()) == 3
    rows = wait_for(lambda: len(r := _audit(scp, "instances_received")) == 2 and r, timeout=10,
                    msg="one receipt row per association")
    assert [(json.loads(r.detail)["instances"], json.loads(r.detail)["unchanged"]) for r in rows] == [(3, 0), (3, 3)]


def _send_raw(port: int, tmp_path: Path, meta_sop: str, dataset: Dataset | bytes,
              monkeypatch: pytest.MonkeyPatch) -> int:
    """C-STORE exactly these bytes (pynetdicom's chunked mode sends a file's dataset as it is)."""
    from pynetdicom import _config as pynetdicom_config

    monkeypatch.setattr(pynetdicom_config, "STORE_SEND_CHUNKED_DATASET", True)
    path = tmp_path / "raw.dcm"
    if isinstance(dataset, Dataset):
        meta = BytesIO()
        dataset.file_meta.MediaStorageSOPInstanceUID = meta_sop  # what the command will say
        write_file_meta_info(meta, dataset.file_meta, enforce_standard=False)
        body = BytesIO()
        dcmwrite(body, Dataset(dataset), implicit_vr=False, little_endian=True)
        path.write_bytes(b"\0" * 128 + b"DICM" + meta.getvalue() + body.getvalue())
    else:
        path.write_bytes(dataset)
    return _pyscu_send(port, path)


def test_instance_uid_differing_from_the_command_is_refused(scp: RunningScp, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    ds = make_series(n_slices=1)[0]
    status = _send_raw(scp.port, tmp_path, "1.2.826.0.1.3680043.10.999.1", ds, monkeypatch)
    assert status == 0xC212
    (row,) = _audit(scp, "instance_refused")
    assert json.loads(row.detail)["reason"] == "SOP Class/Instance UID in the dataset differ from the C-STORE request"


def test_truncated_dataset_is_refused_and_leaves_nothing(scp: RunningScp, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    ds = make_series(n_slices=1)[0]
    ds.save_as(tmp_path / "full.dcm", enforce_file_format=True)
    whole = (tmp_path / "full.dcm").read_bytes()
    meta_end = 132 + 12 + int(dcmread(tmp_path / "full.dcm").file_meta.FileMetaInformationGroupLength)
    status = _send_raw(scp.port, tmp_path, str(ds.SOPInstanceUID), whole[:meta_end + 40], monkeypatch)
    assert status in (0xC210, 0xC211)  # cut inside the header: undecodable, or the UIDs are gone
    assert spool_entries(scp.settings) == []
    assert echoscu(scp.port, called="DICOMNODE", calling="STORESCU").returncode == 0


def test_database_failure_while_recording_answers_0xa701(scp: RunningScp) -> None:
    with scp.sessions() as session:  # the database refuses the instance row (as a full or failing disk would)
        session.execute(text("CREATE TRIGGER instance_fails BEFORE INSERT ON instance "
                             "BEGIN SELECT RAISE(ABORT, 'simulated database failure'); END"))
        session.commit()
    status = _pyscu_send(scp.port, make_series(n_slices=1)[0])
    assert status == 0xA701
    with scp.sessions() as session:
        assert session.scalars(select(Instance)).all() == []
    (row,) = _audit(scp, "instance_refused")
    assert json.loads(row.detail)["status"] == "0xA701"


def test_database_unreachable_before_the_spool_write_answers_0xa701(scp: RunningScp) -> None:
    with scp.sessions() as session:
        session.execute(text("ALTER TABLE instance RENAME TO instance_gone"))
        session.commit()
    ds = make_series(n_slices=1)[0]
    assert _pyscu_send(scp.port, ds) == 0xA701
    assert [r.study_uid for r in _audit(scp, "instance_refused")] == [ds.StudyInstanceUID]
    assert [p for p in spool_entries(scp.settings) if p.is_file()] == []


def test_database_failing_before_a_resend_replaces_its_file_answers_0xa701(scp: RunningScp) -> None:
    """A re-sent instance (its spool file exists) is checked against the database before the file is
    replaced: when that read fails, the refusal is audited with its study and the file kept as it was."""
    ds = make_series(n_slices=1)[0]
    assert _pyscu_send(scp.port, ds) == 0x0000
    (kept,) = [p for p in spool_entries(scp.settings) if p.is_file()]
    before = kept.read_bytes()
    with scp.sessions() as session:
        session.execute(text("ALTER TABLE instance RENAME TO instance_gone"))
        session.commit()
    assert _pyscu_send(scp.port, ds) == 0xA701
    (row,) = _audit(scp, "instance_refused")
    assert row.study_uid == ds.StudyInstanceUID
    assert json.loads(row.detail)["reason"] == "database error: OperationalError"
    assert kept.read_bytes() == before


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that masks nothing: only the node's own explicit modes keep PHI owner-only."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def test_spool_is_owner_only_whatever_the_umask(scp: RunningScp, open_umask: None) -> None:
    ds = make_series(n_slices=1)[0]
    assert _pyscu_send(scp.port, ds) == 0x0000
    with scp.sessions() as session:
        path = Path(session.scalars(select(Instance.path)).one())
    assert path.stat().st_mode & 0o777 == 0o600
    for folder in (path.parent, path.parent.parent):  # series and study folders are named by UIDs
        assert folder.stat().st_mode & 0o777 == 0o700, folder


def test_associations_negotiate_from_contexts_that_none_of_them_changes(scp: RunningScp) -> None:
    """The server's supported contexts are shared by its associations, not copied for each (receive/server.py):
    what one association negotiated (a transfer syntax, an SCP/SCU role) is not what the next one is offered."""
    from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless
    from pynetdicom import build_role
    from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

    before = [(c.abstract_syntax, list(c.transfer_syntax), c.scu_role, c.scp_role) for c in scp.servers[0].contexts]

    def negotiated(syntax: str, roles: list[Any]) -> tuple[str, bool, bool]:
        ae = AE(ae_title="PYSCU")
        ae.add_requested_context(CTImageStorage, [syntax])
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="DICOMNODE", ext_neg=roles)
        try:
            assert assoc.is_established
            (context,) = assoc.accepted_contexts
            return str(context.transfer_syntax[0]), context.as_scu, context.as_scp
        finally:
            assoc.release()

    assert negotiated(JPEGLSLossless, [build_role(CTImageStorage, scu_role=True, scp_role=True)]) == (
        JPEGLSLossless, True, False)  # the node takes no SCU role: it answers as SCP of storage only
    assert negotiated(ExplicitVRLittleEndian, []) == (ExplicitVRLittleEndian, True, False)
    after = [(c.abstract_syntax, list(c.transfer_syntax), c.scu_role, c.scp_role) for c in scp.servers[0].contexts]
    assert after == before
