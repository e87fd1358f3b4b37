"""STOW-RS client (PS3.18 10.5): send result files to a ``dicomweb`` destination, one request for all.

Each instance's outcome comes from the Store Instances Response: stored (0x0000, or 0xB000 when the
server listed a WarningReason) or its FailureReason; an instance the response does not mention counts
as not answered. Whole-request failures raise :class:`~dicomnode.errors.SendError`: retryable for no
connection, a timeout, 408, 429 or 5xx; permanent for any other 4xx (a rejection: the dead letter).
"""

from __future__ import annotations

import http.client
import json
import logging
import ssl
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from dicomnode.errors import SendError
from dicomnode.log import extra
from dicomnode.net.multipart import encode_related
from dicomnode.send.scu import StoreOutcome
from dicomnode.settings import Destination, Settings

log = logging.getLogger(__name__)

RETRYABLE_HTTP = {408, 425, 429}
WARNING = 0xB000


def _connection(settings: Settings, url: urllib.parse.SplitResult, ca_file: Path | None
                ) -> http.client.HTTPConnection:
    if url.scheme != "https":
        return http.client.HTTPConnection(url.hostname or "", url.port, timeout=settings.network_timeout_seconds)
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # BCP 195
    return http.client.HTTPSConnection(url.hostname or "", url.port, timeout=settings.network_timeout_seconds,
                                       context=context)


def request(settings: Settings, method: str, url: str, *, body: bytes | None = None,
            headers: dict[str, str] | None = None, ca_file: Path | None = None) -> tuple[int, str, bytes]:
    """One HTTP(S) request; the status, the Content-Type and the body.

    Raises
    ------
    SendError
        Retryable, when there was no answer (no connection, a timeout, a broken TLS handshake).
    """
    parts = urllib.parse.urlsplit(url)
    conn = _connection(settings, parts, ca_file)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request(method, target, body=body, headers=headers or {})
        rsp = conn.getresponse()
        return rsp.status, rsp.getheader("Content-Type", ""), rsp.read()
    except (OSError, http.client.HTTPException) as exc:
        raise SendError(f"{parts.hostname}: no answer ({type(exc).__name__})", retryable=True) from exc
    finally:
        conn.close()


def _headers(destination: Destination, content_type: str) -> dict[str, str]:
    headers = {"Content-Type": content_type, "Accept": "application/dicom+json"}
    if destination.token_file is not None:
        try:
            token = destination.token_file.read_text().strip()
        except OSError as exc:
            raise SendError(f"token_file of destination {destination.name} unreadable: {exc.strerror}",
                            retryable=False) from exc
        headers["Authorization"] = f"Bearer {token}"
    return headers


def entries(body: bytes) -> list[tuple[str, int]]:
    """(SOP Instance UID, status) of each entry of a Store Instances Response in DICOM JSON, stored ones
    first; a failed entry may name no instance ("": a part refused before its header was read)."""
    try:
        response = Dataset.from_json(json.loads(body)) if body.strip() else Dataset()
    except ValueError:
        return []
    found = [(str(item.get("ReferencedSOPInstanceUID", "")), WARNING if "WarningReason" in item else 0)
             for item in response.get("ReferencedSOPSequence", [])]
    return found + [(str(item.get("ReferencedSOPInstanceUID", "")), int(item.get("FailureReason", 0x0110)))
                    for item in response.get("FailedSOPSequence", [])]


def answers(body: bytes) -> dict[str, int]:
    """SOP Instance UID -> status, from a Store Instances Response in DICOM JSON."""
    return dict(entries(body))


def stow_files(settings: Settings, destination: Destination, paths: Sequence[Path]) -> list[StoreOutcome]:
    """STOW-RS every file in one request; one outcome per file (module docstring).

    Raises
    ------
    SendError
        When the request as a whole failed: retryable (no answer, 408, 425, 429, 5xx) or permanent (4xx).
    """
    headers = [dcmread(p, stop_before_pixels=True) for p in paths]
    body, content_type = encode_related([p.read_bytes() for p in paths])
    status, _, answer = request(settings, "POST", destination.url.rstrip("/") + "/studies", body=body,
                                headers=_headers(destination, content_type), ca_file=destination.tls_ca_file)
    log.info("STOW-RS answered", extra=extra(stage="send", destination=destination.name, status=status))
    if status >= 500 or status in RETRYABLE_HTTP:
        raise SendError(f"{destination.name} answered HTTP {status}", retryable=True)
    if status >= 400 and status != 409:
        raise SendError(f"{destination.name} rejected the results: HTTP {status}", retryable=False)
    found = answers(answer)
    if status == 200 and not found:  # a server that answers success without a response body
        found = {str(h.SOPInstanceUID): 0 for h in headers}
    return [StoreOutcome(path, str(h.SOPClassUID), str(h.SOPInstanceUID), found.get(str(h.SOPInstanceUID)))
            for path, h in zip(paths, headers, strict=True)]
