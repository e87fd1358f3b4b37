"""The edge's side of remote inference, one stage per function, top to bottom:

de-identify (PS3.15 Annex E with the manifest's ``deid_options``, :mod:`dicomnode.remote.deid`; UID map
into the database) -> log in to the cloud (sender role) -> STOW-RS the series (audited as an export under
the de-identified study UID) -> poll QIDO-RS until the cloud's SEG and SR for the series are there ->
WADO-RS them -> re-identify. The pipeline then writes and delivers them as
if they had been computed here.

Failures raise :class:`~dicomnode.errors.SendError`: retryable when the cloud did not answer, answered
5xx or 0xA7xx, or had no results within ``timeout_seconds``; permanent when it refused the login or
the instances.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from io import BytesIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit.events import AuditEvent
from dicomnode.audit.trail import record
from dicomnode.db import session_scope
from dicomnode.errors import SendError
from dicomnode.inference.manifest import RemoteBackend
from dicomnode.jobs.models import DeidUid, RemoteRun
from dicomnode.jobs.repository import ClaimedJob
from dicomnode.log import extra
from dicomnode.net.multipart import MultipartError, encode_related, parse_related
from dicomnode.remote.deid import deidentify, reidentify
from dicomnode.send.stow import RETRYABLE_HTTP, entries, request
from dicomnode.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Timings:
    """Seconds per stage of one remote run (``wait`` is the cloud's queue and model together)."""

    seconds: dict[str, float] = field(default_factory=dict)

    def mark(self, stage: str, started: float) -> float:
        now = time.perf_counter()
        self.seconds[stage] = round(now - started, 3)
        return now


def _seed(sessions: sessionmaker[Session], job_id: int) -> str:
    """The job's de-identification seed: made once, so that a retry sends the same UIDs."""
    with session_scope(sessions) as session:
        run = session.get(RemoteRun, job_id)
        if run is None:
            run = RemoteRun(job_id=job_id, seed=secrets.token_hex(16), deid_study_uid="")
            session.add(run)
        return run.seed


def _keep_map(sessions: sessionmaker[Session], job: ClaimedJob, uid_map: dict[str, str]) -> None:
    with session_scope(sessions) as session:
        known = set(session.scalars(select(DeidUid.original_uid).where(DeidUid.job_id == job.id)))
        session.add_all(DeidUid(job_id=job.id, original_uid=original, deid_uid=deid)
                        for original, deid in uid_map.items() if original not in known)
        run = session.get(RemoteRun, job.id)
        if run is not None:
            run.deid_study_uid = uid_map[job.study_uid]


def _part10(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _login(settings: Settings, backend: RemoteBackend) -> str:
    try:
        password = backend.password_file.read_text().strip()
    except OSError as exc:
        raise SendError(f"remote backend password_file unreadable: {exc.strerror}", retryable=False) from exc
    status, _, body = request(settings, "POST", f"{backend.url.rstrip('/')}/api/login",
                              body=json.dumps({"user": backend.user, "password": password}).encode(),
                              headers={"Content-Type": "application/json"}, ca_file=backend.tls_ca_file)
    if status != 200:
        raise SendError(f"remote backend refused the login: HTTP {status}", retryable=status >= 500 or status == 429)
    return str(json.loads(body)["token"])


def _call(settings: Settings, backend: RemoteBackend, token: str, method: str, path: str, *,
          body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    sent = {"Authorization": f"Bearer {token}", **(headers or {})}
    return request(settings, method, f"{backend.url.rstrip('/')}/dicomweb{path}", body=body, headers=sent,
                   ca_file=backend.tls_ca_file)


def _upload(settings: Settings, backend: RemoteBackend, token: str, copies: list[Dataset], study_uid: str) -> None:
    body, content_type = encode_related([_part10(ds) for ds in copies])
    status, _, answer = _call(settings, backend, token, "POST", f"/studies/{study_uid}", body=body,
                              headers={"Content-Type": content_type, "Accept": "application/dicom+json"})
    if status >= 500 or status in RETRYABLE_HTTP:  # as a STOW-RS destination's (send/stow.py)
        raise SendError(f"remote backend answered HTTP {status} to STOW-RS", retryable=True)
    found = entries(answer)  # one per part, each counted even where it names no instance
    failed = [code for _, code in found if code != 0 and not 0xB000 <= code <= 0xBFFF]
    if status >= 400 and status != 409:
        raise SendError(f"remote backend rejected the series: HTTP {status}", retryable=False)
    if failed or len(found) < len(copies):
        codes = ", ".join(f"0x{c:04X}" for c in failed) or "instances missing from the answer"
        raise SendError(f"remote backend did not store the series: {codes}",
                        retryable=all(0xA700 <= c <= 0xA7FF for c in failed))


def _refers_to(ds: Dataset, series_uid: str) -> bool:
    """Whether a SEG or SR names ``series_uid`` among its sources."""
    items = list(ds.get("ReferencedSeriesSequence", []))
    for evidence in ds.get("CurrentRequestedProcedureEvidenceSequence", []):
        items += list(evidence.get("ReferencedSeriesSequence", []))
    return any(str(item.get("SeriesInstanceUID", "")) == series_uid for item in items)


def _fetch(settings: Settings, backend: RemoteBackend, token: str, study_uid: str, series_uid: str
           ) -> list[Dataset]:
    """The cloud's SEG and SR for the de-identified series, or [] while they are not all there."""
    found: dict[str, Dataset] = {}
    for modality in ("SEG", "SR"):
        status, _, body = _call(settings, backend, token, "GET", f"/studies/{study_uid}/series?Modality={modality}",
                                headers={"Accept": "application/dicom+json"})
        if status >= 400 and status != 404:
            raise SendError(f"remote backend answered HTTP {status} to QIDO-RS", retryable=status >= 500)
        hits = json.loads(body) if status == 200 and body else []
        for hit in hits:
            result_series = hit["0020000E"]["Value"][0]
            status, content_type, body = _call(settings, backend, token, "GET",
                                               f"/studies/{study_uid}/series/{result_series}",
                                               headers={"Accept": 'multipart/related; type="application/dicom"'})
            if status != 200:
                raise SendError(f"remote backend answered HTTP {status} to WADO-RS", retryable=True)
            try:
                parts = parse_related(body, content_type)
            except MultipartError as exc:
                raise SendError(f"remote backend's WADO-RS answer is malformed: {exc}", retryable=True) from exc
            for part in parts:
                try:
                    ds = dcmread(BytesIO(part))
                except (InvalidDicomError, ValueError, EOFError, OSError) as exc:  # every byte of a peer's is hostile
                    raise SendError(f"remote backend's WADO-RS answer has a part that is not DICOM "
                                    f"({type(exc).__name__})", retryable=True) from exc
                if _refers_to(ds, series_uid):
                    found[modality] = ds
    return list(found.values()) if len(found) == 2 else []


def _wait(settings: Settings, backend: RemoteBackend, token: str, study_uid: str, series_uid: str
          ) -> tuple[list[Dataset], float]:
    """The results, and the seconds the successful fetch took (their download)."""
    deadline = time.monotonic() + backend.timeout_seconds
    while True:
        started = time.perf_counter()
        results = _fetch(settings, backend, token, study_uid, series_uid)
        if results:
            return results, time.perf_counter() - started
        if time.monotonic() > deadline:
            raise SendError(f"remote backend had no results after timeout_seconds={backend.timeout_seconds:g}",
                            retryable=True)
        time.sleep(backend.poll_seconds)


def run_remote(settings: Settings, sessions: sessionmaker[Session], job: ClaimedJob, backend: RemoteBackend,
               datasets: list[Dataset], timings: Timings | None = None) -> list[Dataset]:
    """The SEG and SR for ``job``'s series, computed by the remote backend, re-identified (module docstring)."""
    timings = timings or Timings()
    started = time.perf_counter()
    copies, uid_map = deidentify(datasets, _seed(sessions, job.id), backend.deid_options)
    _keep_map(sessions, job, uid_map)
    deid_study, deid_series = uid_map[job.study_uid], uid_map[job.series_uid]
    started = timings.mark("deidentify", started)
    token = _login(settings, backend)
    _upload(settings, backend, token, copies, deid_study)
    with session_scope(sessions) as session:  # the export, under the de-identified study UID only
        record(session, AuditEvent.BEGIN_TRANSFER_OUT, actor=settings.ae_title, study_uid=deid_study,
               job_id=job.id, destination=backend.url, instances=len(copies), kind="remote inference",
               deidentified=True)
    started = timings.mark("upload", started)
    results, download = _wait(settings, backend, token, deid_study, deid_series)
    started = timings.mark("wait", started)
    timings.seconds["download"] = round(download, 3)
    timings.seconds["wait"] = round(timings.seconds["wait"] - download, 3)
    restored = [reidentify(ds, uid_map, datasets[0]) for ds in results]
    timings.mark("reidentify", started)
    log.info("remote inference done", extra=extra(stage="remote", job_id=job.id, **timings.seconds))
    return restored
