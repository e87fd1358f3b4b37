"""Build the node's application entity and start the SCP (non-blocking)."""

from __future__ import annotations

from functools import partial
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomnode.receive.handlers import (
    ReceiveContext,
    handle_accepted,
    handle_echo,
    handle_requested,
    handle_store,
)

# Stored as received: uncompressed, deflate, JPEG baseline/lossless, JPEG-LS, JPEG 2000, RLE, ...
# Where a proposed context offers several, the first of this list that it offers wins: explicit VR
# little endian first (as DCMTK's storescp prefers), so that VRs travel with the data.
ACCEPTED_TRANSFER_SYNTAXES = [ExplicitVRLittleEndian] + [
    ts for ts in ALL_TRANSFER_SYNTAXES if ts != ExplicitVRLittleEndian]


def build_ae(ctx: ReceiveContext) -> AE:
    """The SCP's AE: every storage SOP class plus Verification, timeouts from the settings."""
    settings = ctx.settings
    ae = AE(ae_title=settings.ae_title)
    for context in AllStoragePresentationContexts:
        assert context.abstract_syntax is not None
        ae.add_supported_context(context.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification, ACCEPTED_TRANSFER_SYNTAXES)
    ae.require_called_aet = False  # checked, and audited, in handle_requested
    ae.acse_timeout = settings.acse_timeout_seconds
    ae.dimse_timeout = settings.dimse_timeout_seconds
    ae.network_timeout = settings.network_timeout_seconds
    return ae


def start_scp(ctx: ReceiveContext) -> Any:
    """Start listening on ``settings.host:settings.port``; returns the running server."""
    ae = build_ae(ctx)
    handlers: list[Any] = [
        (evt.EVT_REQUESTED, partial(handle_requested, ctx=ctx)),
        (evt.EVT_ACCEPTED, partial(handle_accepted, ctx=ctx)),
        (evt.EVT_C_ECHO, partial(handle_echo, ctx=ctx)),
        (evt.EVT_C_STORE, partial(handle_store, ctx=ctx)),
    ]
    return ae.start_server((ctx.settings.host, ctx.settings.port), block=False, evt_handlers=handlers)
