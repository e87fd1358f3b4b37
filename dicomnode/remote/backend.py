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
```

``prefer-local`` runs remotely when the model is not installed locally (a file missing or with the
wrong digest) or when its local queue is longer than ``max_local_queue``.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.errors import ModelError
from dicomnode.inference.manifest import Manifest, RemoteBackend
from dicomnode.jobs.models import Job
from dicomnode.jobs.status import JobStatus


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
