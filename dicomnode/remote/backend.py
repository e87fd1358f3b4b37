"""Where a model runs: a manifest's ``[remote]`` table names another dicomnode that serves the model.

```toml
[remote]
url = "https://cloud.example.org:8443"   # the cloud node's admin/DICOMweb base URL (/api/login, /dicomweb)
user = "edge-1"                          # a user with the sender role on the cloud node
password_file = "/etc/dicomnode/cloud.password"   # owner-only
tls_ca_file = "/etc/dicomnode/cloud-ca.pem"       # left out: the system's trusted certificates
placement = "prefer-local"   # local | remote | prefer-local
max_local_queue = 4          # prefer-local: remote when more jobs than this wait for the model here
poll_seconds = 2.0           # how often the edge asks the cloud for the results
timeout_seconds = 900.0      # how long it waits for them before the attempt fails (and is retried)
deid_options = []            # PS3.15 Annex E options on top of the Basic profile (dicomnode.remote.options)
```

``prefer-local`` runs remotely when the model is not installed locally (a file missing or with the
wrong digest) or when its local queue is longer than ``max_local_queue``.

A series that may carry burned-in annotation never leaves (:func:`burned_in`): Annex E's Basic profile
de-identifies the header, not the pixels. Such a job runs here when it can (``prefer-local`` with the
model installed), and otherwise fails with :class:`NotSentToRemote`, whose message ends up in the job's
reason and in the failure notice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pydicom import uid
from pydicom.dataset import Dataset
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.errors import DicomNodeError, ModelError
from dicomnode.inference.manifest import Manifest, RemoteBackend
from dicomnode.jobs.models import Job
from dicomnode.jobs.status import JobStatus
from dicomnode.log import extra

log = logging.getLogger(__name__)

# SOP classes that often carry burned-in text (names, dates, IDs in the pixels): without Burned In
# Annotation (0028,0301) = NO they stay here. PS3.4 B.5; the retired ultrasound classes by their UIDs.
BURNED_IN_PRONE = frozenset({
    uid.SecondaryCaptureImageStorage, uid.MultiFrameSingleBitSecondaryCaptureImageStorage,
    uid.MultiFrameGrayscaleByteSecondaryCaptureImageStorage, uid.MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    uid.MultiFrameTrueColorSecondaryCaptureImageStorage,
    uid.UltrasoundImageStorage, uid.UltrasoundMultiFrameImageStorage,
    "1.2.840.10008.5.1.4.1.1.6", "1.2.840.10008.5.1.4.1.1.3",  # Ultrasound (Multi-frame) Image Storage, retired
    uid.VLEndoscopicImageStorage, uid.VideoEndoscopicImageStorage, uid.VLMicroscopicImageStorage,
    uid.VideoMicroscopicImageStorage, uid.VLSlideCoordinatesMicroscopicImageStorage,
    uid.VLPhotographicImageStorage, uid.VideoPhotographicImageStorage, uid.VLWholeSlideMicroscopyImageStorage,
    uid.OphthalmicPhotography8BitImageStorage, uid.OphthalmicPhotography16BitImageStorage,
    uid.DermoscopicPhotographyImageStorage,
})
BURNED_IN = "burned-in annotation"


class NotSentToRemote(DicomNodeError):
    """Not sent to the remote model."""


def remote_backend(manifest: Manifest) -> RemoteBackend | None:
    """The manifest's ``[remote]`` table (validated with the manifest), or None when it has none."""
    return manifest.remote


def installed(manifest: Manifest) -> bool:
    """Whether every file of the model is here with its digest."""
    try:
        for file in manifest.required_files:
            manifest.resolve(file)
    except ModelError:
        return False
    return True


def _queued(sessions: sessionmaker[Session], model_id: str) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Job).where(
            Job.model_id == model_id, Job.status == JobStatus.QUEUED)) or 0)


def goes_remote(manifest: Manifest, backend: RemoteBackend | None, sessions: sessionmaker[Session]) -> bool:
    """Whether this job of ``manifest``'s model runs on the remote backend (module docstring)."""
    if backend is None or backend.placement == "local":
        return False
    if backend.placement == "remote" or not installed(manifest):
        return True
    return _queued(sessions, manifest.id) > backend.max_local_queue


def burned_in(datasets: Sequence[Dataset]) -> bool:
    """Whether an instance says Burned In Annotation (0028,0301) YES, or says nothing while its SOP class
    is one of :data:`BURNED_IN_PRONE`."""
    for ds in datasets:
        flag = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
        if flag == "YES" or (flag != "NO" and str(ds.get("SOPClassUID", "")) in BURNED_IN_PRONE):
            return True
    return False


def runs_remote(manifest: Manifest, backend: RemoteBackend | None, sessions: sessionmaker[Session],
                datasets: Sequence[Dataset], job_id: int | None = None) -> bool:
    """Where this job runs: :func:`goes_remote`, unless the series may not leave (:func:`burned_in`).

    Raises
    ------
    NotSentToRemote
        When the series would go remote, may not leave, and the model cannot run here (placement
        ``remote``, or ``prefer-local`` without the model installed).
    """
    if backend is None or not goes_remote(manifest, backend, sessions):
        return False
    if not burned_in(datasets):
        return True
    if backend.placement == "prefer-local" and installed(manifest):
        log.info("runs here: %s", BURNED_IN, extra=extra(stage="remote", job_id=job_id, model=manifest.id))
        return False
    raise NotSentToRemote(f"not sent to the remote model: {BURNED_IN}")
