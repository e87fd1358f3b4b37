"""DICOMweb (PS3.18) on the admin app, under /dicomweb: STOW-RS in, QIDO-RS and WADO-RS for the results.

- ``POST /dicomweb/studies`` and ``POST /dicomweb/studies/{study}``: STOW-RS, a
  ``multipart/related; type="application/dicom"`` body; each part lands through
  :func:`dicomnode.store.ingest.ingest`, as a C-STORE does, and gets its own entry in the Store Instances
  Response (``application/dicom+json``; :mod:`dicomnode.dicomweb.stow`). The body is read as it arrives,
  each part into a file on the spool's file system, never into memory; the parts land once it has all
  arrived. A malformed body (415 wrong type, 400 truncated or malformed, 413 too large) stores nothing.
- ``GET /dicomweb/studies/{study}/series[?Modality=SEG|SR]`` and ``.../series/{series}/instances``: QIDO-RS
  over the study's results. ``GET .../series/{series}`` and ``.../instances/{sop}``: WADO-RS, the result
  files as ``multipart/related; type="application/dicom"``.

Bearer tokens come from ``POST /api/login``. The ``admin`` and ``sender`` roles may store; the
``viewer`` role gets 403. A study belongs to the sender that first stored it: a sender stores into and
reads the results of its own studies only. Its store into another sender's study, or into one the PACS
sent, is refused with the answer it gets for an instance whose UIDs another study holds (0xC213, HTTP 409
when it is the only part), and audited as a ``study_not_owned`` security alert (per burst); its QIDO-RS
and WADO-RS of such a study are 404, as for a study that does not exist. An admin stores into and reads
every study. See :mod:`dicomnode.store.ingest` ("Ownership") for why both refusals are one answer.
Each request names the user and address in the audit trail: its receipts in one row per study, its
refusals per burst (:mod:`dicomnode.dicomweb.stow`); each retrieval is audited.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from dicomnode.admin.csrf import public_origin
from dicomnode.admin.deps import WebUser, client_address, state
from dicomnode.admin.schemas import UID_PATTERN
from dicomnode.audit.bursts import BurstAuditor
from dicomnode.audit.events import AuditEvent, Outcome
from dicomnode.audit.trail import record
from dicomnode.db import session_scope
from dicomnode.dicomweb.results import ResultFile, instance_attributes, result_files, series_attributes
from dicomnode.dicomweb.stow import Arrived, PartFiles, PartOutcome, store_parts, store_response
from dicomnode.jobs.models import Study
from dicomnode.log import extra
from dicomnode.net.multipart import DICOM, MultipartError, RelatedReader, encode_related
from dicomnode.settings import AdminUser
from dicomnode.store.ingest import Client
from dicomnode.store.ownership import study_owner

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
FEED_BYTES = 2**20  # the body is handed to the parser's thread in pieces of about this size

router = APIRouter(prefix="/dicomweb", tags=["dicomweb"])


StudyUid = Annotated[str, Path(pattern=UID_PATTERN)]
SeriesUid = Annotated[str, Path(pattern=UID_PATTERN)]


def _base(request: Request) -> str:
    """The RetrieveURL base: the node's public origin, never the request's Host header."""
    return f"{public_origin(request).rstrip('/')}/dicomweb"


def _client(request: Request, user: AdminUser) -> Client:
    return Client(actor=user.name, address=client_address(request), calling_ae=user.name[:16],
                  sender=user.name, transport="STOW-RS", admin=user.role == "admin")


def _bursts(request: Request) -> BurstAuditor:
    bursts = state(request).ctx.bursts
    assert bursts is not None  # AdminContext makes one when none is given
    return bursts


def _store_all(request: Request, user: AdminUser, parts: list[Arrived], study_uid: str | None
               ) -> list[PartOutcome]:
    return store_parts(state(request).ctx.lands, _client(request, user), parts, study_uid)


def _refuse_body(request: Request, user: AdminUser, exc: MultipartError) -> None:
    """A malformed request: audited per burst (one key per HTTP status, user and address)."""
    address = client_address(request)
    try:
        _bursts(request).refused(AuditEvent.INSTANCE_REFUSED, repr(("stow", f"HTTP {exc.status}", user.name, address)),
                                 actor=user.name, outcome=Outcome.MINOR_FAILURE, address=address,
                                 status=f"HTTP {exc.status}", reason=f"STOW-RS request refused: {exc}",
                                 transport="STOW-RS")
    except SQLAlchemyError:
        log.exception("could not audit a refused STOW-RS request", extra=extra(stage="receive"))


async def _receive(request: Request, files: PartFiles) -> None:
    """The body, read as it arrives, its parts into ``files``: the event loop gathers about
    :data:`FEED_BYTES` of it at a time and a worker thread parses and writes them. Raises
    MultipartError, and whatever reading the body raises (413 past the limit, a client gone)."""
    reader = RelatedReader(request.headers.get("content-type", ""), files)
    pending: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        pending.append(chunk)
        size += len(chunk)
        if size >= FEED_BYTES:
            await run_in_threadpool(reader.feed, b"".join(pending))
            pending, size = [], 0
    await run_in_threadpool(reader.feed, b"".join(pending))
    reader.close()


async def _stow(request: Request, user: AdminUser, study_uid: str | None) -> Response:
    files = PartFiles(state(request).ctx.settings)
    try:
        try:
            await _receive(request, files)
        except MultipartError as exc:
            await run_in_threadpool(_refuse_body, request, user, exc)
            raise HTTPException(exc.status, f"{exc}; nothing was stored") from None
        outcomes = await run_in_threadpool(_store_all, request, user, files.arrived, study_uid)
    finally:
        files.discard()  # the parts' files that did not land
    status, response = store_response(outcomes, _base(request))
    return JSONResponse(response.to_json_dict(), status_code=status, media_type=DICOM_JSON)


@router.post("/studies", response_class=Response)
async def _stow_any(request: Request, user: WebUser) -> Response:
    return await _stow(request, user, None)


@router.post("/studies/{study_uid}", response_class=Response)
async def _stow_study(request: Request, study_uid: StudyUid, user: WebUser) -> Response:
    return await _stow(request, user, study_uid)


def _readable(request: Request, user: AdminUser, study_uid: str) -> Study:
    """The study, when ``user`` may read its results: an admin any, a sender its own (404 otherwise, as for
    a study that does not exist: nobody learns what others sent)."""
    with state(request).ctx.sessions() as session:
        study = session.scalar(select(Study).where(Study.study_uid == study_uid))
        allowed = study is not None and (user.role == "admin" or study_owner(session, study_uid) == user.name)
        if study is None or not allowed:
            raise HTTPException(404, "no such study")
        session.expunge(study)
        return study


def _results(request: Request, user: AdminUser, study_uid: str) -> list[ResultFile]:
    _readable(request, user, study_uid)
    ctx = state(request).ctx
    return result_files(ctx.settings, ctx.sessions, study_uid)


@router.get("/studies/{study_uid}/series", response_class=Response)
def _search_series(request: Request, study_uid: StudyUid, user: WebUser,
                   modality: Annotated[str | None, Query(alias="Modality", pattern=r"^[A-Z]{1,16}$")] = None
                   ) -> Response:
    files = [f for f in _results(request, user, study_uid) if modality is None or f.header.Modality == modality]
    answers = [ds.to_json_dict() for ds in series_attributes(files, _base(request))]
    return JSONResponse(answers, media_type=DICOM_JSON) if answers else Response(status_code=204)


@router.get("/studies/{study_uid}/series/{series_uid}/instances", response_class=Response)
def _search_instances(request: Request, study_uid: StudyUid, series_uid: SeriesUid, user: WebUser) -> Response:
    files = [f for f in _results(request, user, study_uid) if f.series_uid == series_uid]
    answers = [ds.to_json_dict() for ds in instance_attributes(files, _base(request))]
    return JSONResponse(answers, media_type=DICOM_JSON) if answers else Response(status_code=204)


def _accepts_dicom(accept: str) -> bool:
    return not accept or any(kind in accept for kind in (DICOM, "*/*", "multipart/related"))


def _retrieve(request: Request, user: AdminUser, study_uid: str, series_uid: str, sop: str | None,
              accept: str) -> Response:
    if not _accepts_dicom(accept):
        raise HTTPException(406, f"results are served as multipart/related; type=\"{DICOM}\"")
    study = _readable(request, user, study_uid)
    ctx = state(request).ctx
    files = [f for f in result_files(ctx.settings, ctx.sessions, study_uid)
             if f.series_uid == series_uid and (sop is None or f.sop_instance_uid == sop)]
    if not files:
        raise HTTPException(404, "no such result")
    body, content_type = encode_related([f.path.read_bytes() for f in files])
    with session_scope(ctx.sessions) as session:
        record(session, AuditEvent.RESULT_SENT, actor=user.name, **study.subject(), address=client_address(request),
               transport="WADO-RS", instances=len(files),
               sop_classes={str(f.header.SOPClassUID): 1 for f in files})
    return Response(body, media_type=content_type)


@router.get("/studies/{study_uid}/series/{series_uid}", response_class=Response)
def _retrieve_series(request: Request, study_uid: StudyUid, series_uid: SeriesUid,
                     user: WebUser, accept: Annotated[str, Header()] = "") -> Response:
    return _retrieve(request, user, study_uid, series_uid, None, accept)


@router.get("/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}", response_class=Response)
def _retrieve_instance(request: Request, study_uid: StudyUid, series_uid: SeriesUid,
                       sop_uid: Annotated[str, Path(pattern=UID_PATTERN)], user: WebUser,
                       accept: Annotated[str, Header()] = "") -> Response:
    return _retrieve(request, user, study_uid, series_uid, sop_uid, accept)

