"""A job's comparison with the patient's prior study: found and fetched (:mod:`.priors`), segmented by the
same model, measured; what :mod:`dicomnode.results.longitudinal` puts into the SR.

Every way it can go wrong (no query peer, the peer refuses the C-FIND or the C-GET, nothing matches,
the prior cannot be read or segmented) is a :class:`~dicomnode.results.longitudinal.Comparison` without a
prior whose ``reason`` says why: the result comes without comparison, never a failure.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pydicom import dcmread
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.audit.bursts import BurstAuditor
from dicomnode.audit.events import AuditEvent
from dicomnode.audit.trail import record
from dicomnode.config_store import query_peers
from dicomnode.db import session_scope
from dicomnode.inference.manifest import Manifest
from dicomnode.inference.result import SegmentationResult
from dicomnode.inference.volume import Volume, build_volume
from dicomnode.jobs.models import Study
from dicomnode.jobs.repository import ClaimedJob
from dicomnode.log import extra
from dicomnode.query.priors import PriorSeries, find_and_fetch, mark
from dicomnode.results.longitudinal import Comparison, PriorVolumes, study_date
from dicomnode.results.sr import segment_volumes_ml
from dicomnode.settings import Settings

log = logging.getLogger(__name__)


def compare_with_priors(settings: Settings, sessions: sessionmaker[Session], manifest: Manifest, job: ClaimedJob,
                        image: Volume, segment: Callable[[Volume], SegmentationResult]) -> Comparison | None:
    """The newest usable prior's volumes (``segment`` runs the job's model), or why there are none; None
    where the node has no query peer (``query = true``): priors are not looked for, the SR says nothing."""
    spec = manifest.input.priors
    current = image.datasets[0]
    today = study_date(current)
    peers = query_peers(settings, sessions)
    if spec is None or not peers:
        return None
    try:
        with sessions() as session:
            calling_ae = session.scalar(select(Study.calling_ae).where(Study.study_uid == job.study_uid)) or ""
        bursts = BurstAuditor(sessions, settings.audit_burst_seconds)
        outcome = find_and_fetch(settings, sessions, peers, spec, current, calling_ae, job.id, bursts)
    except Exception as exc:  # a prior is a comparison, never a reason for the job to fail
        log.exception("looking for priors failed", extra=extra(stage="priors", job_id=job.id))
        return Comparison(today, reason=f"the search for priors failed ({type(exc).__name__})")
    if not outcome.fetched:
        log.info("no prior", extra=extra(stage="priors", job_id=job.id, reason=outcome.reason))
        return Comparison(today, reason=outcome.reason)
    prior, files = outcome.fetched[0]  # the newest
    try:
        volumes = _measure(sessions, manifest, job, prior, files, segment)
    except Exception as exc:
        reason = f"the prior could not be segmented ({type(exc).__name__})"
        mark(sessions, job.id, prior.series_uid, "not_used", reason)
        return Comparison(today, reason=reason)
    mark(sessions, job.id, prior.series_uid, "used", "")
    return Comparison(today, prior=volumes)


def _measure(sessions: sessionmaker[Session], manifest: Manifest, job: ClaimedJob, prior: PriorSeries,
             files: list[str], segment: Callable[[Volume], SegmentationResult]) -> PriorVolumes:
    datasets = [dcmread(path, force=True) for path in files]
    volume = build_volume(datasets, manifest.min_slices)
    with session_scope(sessions) as session:  # the model reads the prior: DICOM Instances Accessed
        first = volume.datasets[0]
        record(session, AuditEvent.INSTANCES_ACCESSED, actor=f"{job.model_id} {job.model_version}",
               study_uid=prior.study_uid, patient_id=str(first.get("PatientID", "")) or None,
               patient_name=str(first.get("PatientName", "")) or None, job_id=job.id, series_uid=prior.series_uid,
               instances=len(datasets), prior_of=job.study_uid)
    labels = segment(volume).labels
    date = study_date(volume.datasets[0])
    assert date is not None  # the search kept dated studies only
    return PriorVolumes(prior.study_uid, prior.series_uid, date, volume.datasets[len(volume.datasets) // 2],
                        segment_volumes_ml(labels, volume.voxel_volume_mm3, manifest))
