"""Priors declared by the model: found at Orthanc (C-FIND), fetched by C-GET or C-MOVE, compared in the SR.

The test-only threshold model declares ``[input.priors]`` (one prior, at most 1000 days old, same modality).
Orthanc holds, for the current study's patient, a prior MR series whose voxels are larger by a known
factor (so its segmented volume is known), and decoys that must not be used: another patient's MR
study, a newer CT study of the patient and an MR study older than the limit. Orthanc routes the current
study to the node; the SR that comes back must carry the prior's volume, the change in ml, per cent and
the annualised rate as this test computes them (within 1 %), pass dciodvfy and PixelMed's
DicomSRValidator with no error, and the prior must be kept, not routed. A PACS that refuses the C-FIND
or the C-GET gives a result without comparison that says why, and the audit trail shows the refusal.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select

from dicomnode.audit.models import AuditRecord
from dicomnode.jobs.models import Job, PriorStudy, Series, Study
from dicomnode.jobs.status import JobStatus, StudyState
from dicomnode.node import Node, start_node
from dicomnode.settings import Peer
from tests.conftest import make_settings
from tests.support.models import write_threshold_model
from tests.support.net import free_port, wait_for
from tests.support.peers import Orthanc, dciodvfy, sr_validator, storescu
from tests.support.status import status_of, study_page
from tests.support.synthetic import make_series, write_series

SLICES, SIZE = 189, 64
SPACING, STEP = (0.8, 0.9), 2.0
SCALE = 1.05  # the prior's pixels are 5 % wider and taller: its volume is 1.1025 times the current one
CURRENT_DATE, PRIOR_DATE = dt.date(2026, 1, 1), dt.date(2024, 1, 1)
PRIORS = "\n[input.priors]\ncount = 1\nmax_age_days = 1000\nsame_modality = true\nseries_description = \"T1\"\n"


def bright_ml(spacing: tuple[float, float]) -> float:
    """The threshold model's label (rescaled value > 40) of a synthetic series, in ml, computed here."""
    k, row = np.meshgrid(np.arange(SLICES), np.arange(SIZE), indexing="ij")
    value = 2.0 * (row + (k + 1) * 10) - 100.0  # make_series: pixel (k + 1) * 10 + row, slope 2, intercept -100
    return float(np.count_nonzero(value > 40.0)) * SIZE * spacing[0] * spacing[1] * STEP / 1000.0


def series(patient: str, date: dt.date, *, modality: str = "MR", spacing: tuple[float, float] = SPACING,
           description: str = "CRASHTEST T1") -> list[Dataset]:
    datasets = make_series(n_slices=SLICES, rows=SIZE, columns=SIZE, spacing=spacing, slice_step=STEP,
                           series_description=description, patient_id=patient)
    for ds in datasets:
        ds.StudyDate = f"{date:%Y%m%d}"
        ds.Modality = modality
    return datasets


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path / "orthanc", receipts_enabled=False).start()
    yield server
    server.stop()


def store(orthanc: Orthanc, folder: Path, datasets: list[Dataset]) -> str:
    write_series(datasets, folder)
    assert storescu(orthanc.dicom_port, folder, called=orthanc.aet).returncode == 0
    return str(datasets[0].StudyInstanceUID)


def archive(orthanc: Orthanc, tmp_path: Path, patient: str) -> dict[str, str]:
    """The prior and the decoys into Orthanc; their study UIDs by name."""
    return {
        "prior": store(orthanc, tmp_path / "prior", series(patient, PRIOR_DATE,
                                                           spacing=(SPACING[0] * SCALE, SPACING[1] * SCALE))),
        "other patient": store(orthanc, tmp_path / "other", series(patient + "-X", dt.date(2025, 1, 1))),
        "other modality": store(orthanc, tmp_path / "ct", series(patient, dt.date(2025, 6, 1), modality="CT")),
        "too old": store(orthanc, tmp_path / "old", series(patient, CURRENT_DATE - dt.timedelta(days=1500))),
    }


def run_node(tmp_path: Path, orthanc: Orthanc, retrieve: str, *, modality: dict[str, Any] | None = None) -> Node:
    models = write_threshold_model(tmp_path / "models", 40.0, input_extra=PRIORS).parent
    settings = make_settings(tmp_path / "data", host="127.0.0.1", port=free_port(), models_dir=models,
                             pacs=Peer(ae_title=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port, query=True,
                                       retrieve=retrieve),  # type: ignore[arg-type]
                             peers=[Peer(ae_title="STORESCU", host="127.0.0.1")], min_free_disk_mb=1,
                             study_idle_seconds=2.0)
    if modality is not None:  # Orthanc knows the node (routing, C-MOVE), with these permissions
        orthanc.request("PUT", "/modalities/NODE", {"AET": settings.ae_title, "Host": "127.0.0.1",
                                                    "Port": settings.port, **modality})
    node = start_node(settings)
    node.ctx.registry.get("threshold-test")
    return node


def route(orthanc: Orthanc, study_uid: str) -> None:
    answer = orthanc.request("POST", "/modalities/NODE/store", {"Resources": [orthanc.study_id(study_uid)],
                                                                "Synchronous": True})
    assert answer["FailedInstancesCount"] == 0, answer


def finished_sr(node: Node, study_uid: str) -> Path:
    def done() -> Path | None:
        with node.ctx.sessions() as session:
            job = session.scalar(select(Job).join(Job.series).join(Series.study).where(Study.study_uid == study_uid))
            if job is None or job.status not in (JobStatus.SUCCEEDED, JobStatus.DEAD_LETTER):
                return None
            assert job.status == JobStatus.SUCCEEDED, job.reason
            folder = node.settings.results_dir / f"job-{job.id}"
        return next(p for p in sorted(folder.rglob("*.dcm")) if dcmread(p, stop_before_pixels=True).Modality == "SR")

    found = wait_for(done, timeout=300, msg="the job succeeded", interval=0.2)
    assert found is not None
    return found


def content(sr: Dataset) -> list[Dataset]:
    """Every content item of the SR, depth first."""
    out: list[Dataset] = []

    def walk(items: Any) -> None:
        for item in items:
            out.append(item)
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    return out


def numbers(sr: Dataset) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {}
    for item in content(sr):
        if item.ValueType == "NUM":
            code = item.ConceptNameCodeSequence[0].CodeValue
            found.setdefault(code, []).append(float(item.MeasuredValueSequence[0].NumericValue))
    return found


def comments(sr: Dataset) -> list[str]:
    return [str(i.TextValue) for i in content(sr) if i.ValueType == "TEXT"]


def check_comparison(node: Node, sr_path: Path, studies: dict[str, str]) -> None:
    sr = dcmread(sr_path)
    now_ml, prior_ml = bright_ml(SPACING), bright_ml((SPACING[0] * SCALE, SPACING[1] * SCALE))
    days = (CURRENT_DATE - PRIOR_DATE).days
    expected = {"change": now_ml - prior_ml, "per cent": 100 * (now_ml - prior_ml) / prior_ml}
    expected["per year"] = expected["per cent"] * 365.25 / days
    values = numbers(sr)
    volumes = values["118565006"]  # SCT Volume: the segment's own group, the prior, and now in the change group
    assert any(abs(v - prior_ml) <= 0.01 * prior_ml for v in volumes), (volumes, prior_ml)
    assert any(abs(v - now_ml) <= 0.01 * now_ml for v in volumes), (volumes, now_ml)
    for code, key in (("VOLCHG", "change"), ("125314", "per cent"), ("VOLCHGRATE", "per year")):
        (value,) = values[code]
        assert abs(value - expected[key]) <= 0.01 * abs(expected[key]), (key, value, expected[key])
    others = {str(s.StudyInstanceUID) for s in sr.get("PertinentOtherEvidenceSequence", [])}
    assert others == {studies["prior"]}, "the SR references the prior study, and no decoy"
    times = [str(i.TextValue) for i in content(sr) if i.ConceptNameCodeSequence[0].CodeValue == "C2348792"]
    assert f"prior {PRIOR_DATE:%Y-%m-%d}" in times and f"current {CURRENT_DATE:%Y-%m-%d}" in times, times
    errors, _ = dciodvfy(sr_path)
    assert errors == [], errors
    errors, _ = sr_validator(sr_path)
    assert errors == [], errors
    with node.ctx.sessions() as session:
        rows = session.scalars(select(PriorStudy)).all()
        assert [(r.study_uid, r.state) for r in rows] == [(studies["prior"], "used")]
        assert rows[0].instances == SLICES
        prior = session.scalar(select(Study).where(Study.study_uid == studies["prior"]))
        assert prior is not None and prior.state != StudyState.ROUTED  # kept, never routed
        assert not session.scalars(select(Job).join(Job.series).where(Series.study_id == prior.id)).all()
        decoys = {studies[k] for k in ("other patient", "other modality", "too old")}
        assert not session.scalars(select(Study).where(Study.study_uid.in_(decoys))).all()
    print(f"\nprior {rows[0].instances} instances, {rows[0].bytes / 2**20:.1f} MiB in {rows[0].seconds:.2f} s")
    current_uid = str(sr.StudyInstanceUID)
    assert f"prior {PRIOR_DATE:%Y%m%d} for job 1: used, {SLICES} instance(s)" in status_of(node, current_uid)
    page = study_page(node, current_uid)
    assert f"<td>{PRIOR_DATE:%Y%m%d}</td><td>{rows[0].series_uid}</td><td>used</td><td>{SLICES}</td>" in page


@pytest.mark.parametrize("retrieve", ["get", "move"])
def test_the_sr_compares_with_the_prior(tmp_path: Path, orthanc: Orthanc, retrieve: str) -> None:
    studies = archive(orthanc, tmp_path, "PRIOR-1")
    current = store(orthanc, tmp_path / "current", series("PRIOR-1", CURRENT_DATE))
    node = run_node(tmp_path, orthanc, retrieve, modality={})
    try:
        route(orthanc, current)
        sr_path = finished_sr(node, current)
        wait_for(lambda: _prior_kept(node, studies["prior"]), timeout=60, msg="the prior kept, not routed")
        check_comparison(node, sr_path, studies)
    finally:
        node.stop()


def test_priors_of_another_patient_modality_or_older_than_the_limit_are_not_used(tmp_path: Path,
                                                                                  orthanc: Orthanc) -> None:
    """Only the decoys at Orthanc: another patient's MR, the patient's CT and an MR older than max_age_days."""
    studies = archive(orthanc, tmp_path, "PRIOR-4")
    orthanc.request("DELETE", f"/studies/{orthanc.study_id(studies['prior'])}")
    current = store(orthanc, tmp_path / "current", series("PRIOR-4", CURRENT_DATE))
    node = run_node(tmp_path, orthanc, "get", modality={})
    try:
        route(orthanc, current)
        sr = dcmread(finished_sr(node, current))
    finally:
        node.stop()
    said = [c for c in comments(sr) if c.startswith("No comparison with a prior study")]
    assert said and "no prior series of the patient matches" in said[0], comments(sr)
    assert "VOLCHG" not in numbers(sr) and "PertinentOtherEvidenceSequence" not in sr
    with node.ctx.sessions() as session:
        assert not session.scalars(select(PriorStudy)).all()


def _prior_kept(node: Node, study_uid: str) -> bool:
    with node.ctx.sessions() as session:
        state = session.scalar(select(Study.state).where(Study.study_uid == study_uid))
    return state == StudyState.NO_MATCH


def refused_queries(node: Node) -> list[dict[str, Any]]:
    with node.ctx.sessions() as session:
        rows = session.scalars(select(AuditRecord).where(AuditRecord.event == "query",
                                                         AuditRecord.outcome == "minor_failure"))
        return [json.loads(r.detail) for r in rows]


def test_a_pacs_that_refuses_the_c_find_gives_a_result_without_comparison(tmp_path: Path, orthanc: Orthanc) -> None:
    archive(orthanc, tmp_path, "PRIOR-2")
    folder = tmp_path / "current"
    current = series("PRIOR-2", CURRENT_DATE)
    write_series(current, folder)
    node = run_node(tmp_path, orthanc, "get")  # Orthanc does not know the node: it refuses its C-FIND
    try:
        assert storescu(node.settings.port, folder, called=node.settings.ae_title).returncode == 0
        sr = dcmread(finished_sr(node, str(current[0].StudyInstanceUID)))
        said = [c for c in comments(sr) if c.startswith("No comparison with a prior study")]
        assert said and "refused the C-FIND" in said[0], comments(sr)
        assert "VOLCHG" not in numbers(sr)
        assert any(q["purpose"] == "priors" and "refused" in q["reason"] for q in refused_queries(node))
    finally:
        node.stop()


def test_a_pacs_that_refuses_the_c_get_gives_a_result_without_comparison(tmp_path: Path, orthanc: Orthanc) -> None:
    studies = archive(orthanc, tmp_path, "PRIOR-3")
    current = store(orthanc, tmp_path / "current", series("PRIOR-3", CURRENT_DATE))
    node = run_node(tmp_path, orthanc, "get", modality={"AllowGet": False})
    try:
        route(orthanc, current)
        sr = dcmread(finished_sr(node, current))
        said = [c for c in comments(sr) if c.startswith("No comparison with a prior study")]
        assert said and "could not be fetched" in said[0], comments(sr)
        with node.ctx.sessions() as session:
            rows = session.scalars(select(PriorStudy)).all()
            assert [(r.study_uid, r.state) for r in rows] == [(studies["prior"], "failed")]
            transfers = session.scalars(select(AuditRecord).where(AuditRecord.event == "begin_transfer_in",
                                                                  AuditRecord.study_uid == studies["prior"])).all()
            assert transfers, "the refused retrieval is audited with the query that found it"
    finally:
        node.stop()


BRAIN_SCALE = 1.03  # the prior's voxels are 3 % larger along each axis: its brain is 1.03^3 times the current one


def mni(folder: Path, date: dt.date, scale: float = 1.0) -> list[Dataset]:
    """The MNI152 template as a study of patient MNI-1 on ``date``, its voxels ``scale`` times larger
    (positions, pixel spacing and thickness scaled about the first slice)."""
    study, series_uid = generate_uid(), generate_uid()
    out: list[Dataset] = []
    paths = sorted(p for p in folder.iterdir() if p.is_file())
    origin = np.array([float(v) for v in dcmread(paths[0], stop_before_pixels=True).ImagePositionPatient])
    for path in paths:
        ds = dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID, ds.StudyDate = "MNI-1", f"{date:%Y%m%d}"
        position = origin + (np.array([float(v) for v in ds.ImagePositionPatient]) - origin) * scale
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.PixelSpacing = [f"{float(v) * scale:.6f}" for v in ds.PixelSpacing]
        for keyword in ("SliceThickness", "SpacingBetweenSlices"):
            if keyword in ds:
                setattr(ds, keyword, f"{float(ds.get(keyword)) * scale:.6f}")
        out.append(ds)
    return out


def test_deepbet_reports_brain_volume_change(tmp_path: Path, orthanc: Orthanc, shared_data: Path) -> None:
    """deepbet (the bundled model, which declares [input.priors]) on the MNI152 template now and on a prior
    whose brain is 1.03^3 times larger: the SR's prior volume and changes as computed here, within 1 %."""
    template = shared_data / "mr_t1_brain_mni152"
    prior = store(orthanc, tmp_path / "prior", mni(template, PRIOR_DATE, BRAIN_SCALE))
    current = store(orthanc, tmp_path / "current", mni(template, CURRENT_DATE))
    settings = make_settings(tmp_path / "data", host="127.0.0.1", port=free_port(), min_free_disk_mb=1,
                             pacs=Peer(ae_title=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port, query=True),
                             study_idle_seconds=2.0)
    orthanc.add_modality("NODE", settings.ae_title, settings.port)
    node = start_node(settings)
    try:
        route(orthanc, current)
        sr_path = finished_sr(node, current)
    finally:
        node.stop()
    sr = dcmread(sr_path)
    values = numbers(sr)
    now_ml = values["118565006"][0]  # the report's own brain group
    prior_ml = now_ml * BRAIN_SCALE ** 3
    days = (CURRENT_DATE - PRIOR_DATE).days
    per_cent = 100 * (now_ml - prior_ml) / prior_ml
    assert any(abs(v - prior_ml) <= 0.01 * prior_ml for v in values["118565006"]), (values, prior_ml)
    for code, want in (("VOLCHG", now_ml - prior_ml), ("125314", per_cent), ("VOLCHGRATE", per_cent * 365.25 / days)):
        (value,) = values[code]
        assert abs(value - want) <= 0.01 * abs(want), (code, value, want)
    assert {str(s.StudyInstanceUID) for s in sr.PertinentOtherEvidenceSequence} == {prior}
    for validate in (dciodvfy, sr_validator):
        errors, _ = validate(sr_path)
        assert errors == [], errors
    print(f"\ndeepbet: brain {now_ml:.1f} ml now, prior {values['118565006']} ml; {values}")
