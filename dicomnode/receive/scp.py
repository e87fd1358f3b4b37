"""Build the node's application entity and start the SCP (non-blocking)."""

from __future__ import annotations

from functools import partial
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomnode.net import reactor
from dicomnode.net.tls import server_context
from dicomnode.receive.dataphase.native import DataPhase
from dicomnode.receive.handlers import (
    ReceiveContext,
    handle_accepted,
    handle_closed,
    handle_echo,
    handle_oversized_request,
    handle_rejected,
    handle_requested,
    handle_silent,
    handle_store,
    handle_tls_failure,
    handle_too_large,
)
from dicomnode.receive.incoming import receive_into_files
from dicomnode.receive.limits import SizeGuard
from dicomnode.receive.server import start_guarded_server

# Stored as received: uncompressed, deflate, JPEG baseline/lossless, JPEG-LS, JPEG 2000, RLE, ...
# Where a proposed context offers several, the first of this list that it offers wins: explicit VR
# little endian first (as DCMTK's storescp prefers), so that VRs travel with the data.
ACCEPTED_TRANSFER_SYNTAXES = [ExplicitVRLittleEndian] + [
    ts for ts in ALL_TRANSFER_SYNTAXES if ts != ExplicitVRLittleEndian]


def build_ae(ctx: ReceiveContext) -> AE:
    """The SCP's AE: every storage SOP class plus Verification, timeouts from the settings."""
    settings = ctx.settings
    reactor.install()
    ae = AE(ae_title=settings.ae_title)
    for context in AllStoragePresentationContexts:
        assert context.abstract_syntax is not None
        ae.add_supported_context(context.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification, ACCEPTED_TRANSFER_SYNTAXES)
    ae.require_called_aet = False  # checked, and audited, in handle_requested
    ae.acse_timeout = settings.acse_timeout_seconds
    ae.dimse_timeout = settings.dimse_timeout_seconds
    ae.network_timeout = settings.network_timeout_seconds
    ae.maximum_associations = settings.max_associations
    ae.maximum_pdu_size = settings.max_pdu_bytes
    return ae


def start_scp(ctx: ReceiveContext) -> list[Any]:
    """Start listening: plain on ``port`` (unless disabled) and DICOM TLS on ``tls_port`` (when set).

    Returns the running servers; shut each down to stop.
    """
    settings = ctx.settings
    ae = build_ae(ctx)
    handlers: list[Any] = [
        (evt.EVT_REQUESTED, partial(handle_requested, ctx=ctx)),
        (evt.EVT_ACCEPTED, partial(handle_accepted, ctx=ctx)),
        (evt.EVT_REJECTED, partial(handle_rejected, ctx=ctx)),
        (evt.EVT_C_ECHO, partial(handle_echo, ctx=ctx)),
        (evt.EVT_C_STORE, partial(handle_store, ctx=ctx)),
        (evt.EVT_CONN_CLOSE, partial(handle_closed, ctx=ctx)),
    ]
    receive_into_files(settings)
    guard = SizeGuard(int(2 * settings.max_instance_mb * 2**20), partial(handle_too_large, ctx=ctx))
    handlers.append((evt.EVT_PDU_RECV, guard))
    if settings.receive_engine == "native":
        phase = DataPhase(ctx)
        reactor.set_p_data_hook(ae, phase)
        handlers.append((evt.EVT_CONN_CLOSE, phase.on_closed))
    start = partial(start_guarded_server, ae, handlers=handlers, first_pdu_timeout=settings.first_pdu_timeout_seconds,
                    max_request_bytes=settings.max_associate_rq_bytes, share_port=settings.share_port,
                    on_silent=partial(handle_silent, ctx=ctx), on_oversized=partial(handle_oversized_request, ctx=ctx))
    servers = []
    if settings.plain_port_enabled:
        servers.append(start((settings.host, settings.port)))
    if settings.tls_port is not None:
        context = server_context(settings, partial(handle_tls_failure, ctx=ctx))
        servers.append(start((settings.host, settings.tls_port), ssl_context=context))
    if not servers:
        raise ValueError("nothing to listen on: plain_port_enabled is false and tls_port is not set")
    return servers
