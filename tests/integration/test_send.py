"""C-STORE SCU against DCMTK's storescp, a foreign SCP."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    Comprehensive3DSRStorage,
    SegmentationStorage,
    Verification,
)

from dicomnode.errors import SendError
from dicomnode.inference.registry import load_manifests
from dicomnode.inference.volume import build_volume
from dicomnode.results.equipment import ResultIdentity
from dicomnode.results.sanitise import sanitise_headers
from dicomnode.results.seg import build_seg
from dicomnode.results.sr import build_sr, segment_volumes_ml
from dicomnode.send.scu import echo, send_files
from dicomnode.settings import Peer, Settings
from tests.support.net import free_port
from tests.support.peers import REPO, dcmqrscp, storescp


@pytest.fixture
def result_files(tmp_path: Path) -> list[Path]:
    from tests.support.synthetic import make_series

    manifest = load_manifests(REPO / "models")["deepbet"]
    volume = build_volume(make_series(n_slices=6, rows=8, columns=8))
    labels = np.zeros(volume.array.shape, np.uint8)
    labels[1:4, 2:6, 2:6] = 1
    sources = sanitise_headers(volume.datasets)
    identity = ResultIdentity.for_job("1.2.3.4", 1, manifest)
    seg = build_seg(sources, labels, manifest, identity)
    sr = build_sr(seg, sources, segment_volumes_ml(labels, volume.voxel_volume_mm3, manifest), manifest, identity)
    paths = [tmp_path / "seg.dcm", tmp_path / "sr.dcm"]
    seg.save_as(paths[0])
    sr.save_as(paths[1])
    return paths


def test_results_reach_a_dcmtk_scp(settings: Settings, result_files: list[Path], tmp_path: Path,
                                   caplog: pytest.LogCaptureFixture) -> None:
    with storescp(tmp_path / "received") as port, caplog.at_level(logging.INFO):
        peer = Peer(ae_title="STORESCP", host="127.0.0.1", port=port)
        assert echo(settings, peer).status == 0
        outcomes = send_files(settings, peer, result_files)
    # one log line per answer, found by stage and destination, with no PHI of the results sent
    answers = [getattr(r, "ctx", {}) for r in caplog.records if r.getMessage() == "C-STORE answered"]
    assert answers == [{"stage": "send", "destination": "STORESCP", "status": "0x0000"}] * 2
    assert "SYNTHETIC" not in caplog.text and "SYN-0001" not in caplog.text
    assert [o.status for o in outcomes] == [0x0000, 0x0000]
    assert all(o.stored for o in outcomes)
    received = sorted(dcmread(p).Modality for p in (tmp_path / "received").iterdir())
    assert received == ["SEG", "SR"]


def test_refused_association_is_a_permanent_send_error(settings: Settings, result_files: list[Path],
                                                       tmp_path: Path) -> None:
    with storescp(tmp_path / "received", extra_args=("--refuse",)) as port:
        with pytest.raises(SendError, match="rejected") as info:
            send_files(settings, Peer(ae_title="STORESCP", host="127.0.0.1", port=port), result_files)
    assert info.value.retryable is False


def test_nobody_listening_is_a_retryable_send_error(settings: Settings, result_files: list[Path]) -> None:
    with pytest.raises(SendError, match="not established") as info:
        send_files(settings, Peer(ae_title="NOBODY", host="127.0.0.1", port=free_port()), result_files)
    assert info.value.retryable is True


def test_warning_and_failure_statuses() -> None:
    from dicomnode.send.scu import StoreOutcome

    def outcome(status: int | None) -> bool:
        return StoreOutcome(Path("x"), "1.2", "1.2.3", status).stored

    assert outcome(0x0000) and outcome(0xB000) and outcome(0xB007)
    assert not outcome(0xA700) and not outcome(0xA900) and not outcome(0xC000) and not outcome(None)


@pytest.fixture
def busy_scp() -> Iterator[int]:
    """A pynetdicom SCP whose one association slot is taken: it rejects with rejected-transient."""
    ae = AE(ae_title="BUSY")
    ae.maximum_associations = 1
    ae.add_supported_context(Verification)
    for sop_class in (SegmentationStorage, Comprehensive3DSRStorage):
        ae.add_supported_context(sop_class)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False)
    holder = AE(ae_title="HOLDER")
    holder.add_requested_context(Verification)
    held = holder.associate("127.0.0.1", port, ae_title="BUSY")
    assert held.is_established
    try:
        yield port
    finally:
        held.release()
        server.shutdown()


def test_an_echo_the_peer_associates_for_and_never_answers_says_so(settings: Settings) -> None:
    """A peer that accepts the association and gives the C-ECHO no status within dimse_timeout_seconds (a
    pynetdicom SCP whose C-ECHO handler hangs): "no answer to the C-ECHO request", not "no association"."""
    answered = threading.Event()
    ae = AE(ae_title="SLOW")
    ae.add_supported_context(Verification)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_ECHO, lambda _event: answered.wait(30) and 0x0000)])
    try:
        quick = settings.model_copy(update={"dimse_timeout_seconds": 1.0})
        result = echo(quick, Peer(ae_title="SLOW", host="127.0.0.1", port=port))
        assert (result.status, result.associated, str(result)) == (None, True, "no answer to the C-ECHO request")
    finally:
        answered.set()
        server.shutdown()


def test_transient_rejection_is_retryable(settings: Settings, result_files: list[Path], busy_scp: int) -> None:
    with pytest.raises(SendError, match=r"rejected \(transient\)") as info:
        send_files(settings, Peer(ae_title="BUSY", host="127.0.0.1", port=busy_scp), result_files)
    assert info.value.retryable is True


@pytest.mark.parametrize("attempt", range(5))
def test_permanent_rejection_is_decided_the_same_way_every_time(settings: Settings, result_files: list[Path],
                                                                 tmp_path: Path, attempt: int) -> None:
    with storescp(tmp_path / "received", extra_args=("--refuse",)) as port:
        with pytest.raises(SendError, match=r"rejected \(permanent\)") as info:
            send_files(settings, Peer(ae_title="STORESCP", host="127.0.0.1", port=port), result_files)
    assert info.value.retryable is False


def test_association_calls_the_destinations_ae_title(settings: Settings, result_files: list[Path],
                                                     tmp_path: Path) -> None:
    """dcmqrscp answers only to its own AE title: the node must call the destination by its configured one."""
    with dcmqrscp(tmp_path / "archive", aet="ARCHIVE") as port:
        with pytest.raises(SendError, match=r"rejected \(permanent\)"):
            send_files(settings, Peer(ae_title="ELSEWHERE", host="127.0.0.1", port=port), result_files)
        outcomes = send_files(settings, Peer(ae_title="ARCHIVE", host="127.0.0.1", port=port), result_files)
    assert [o.status for o in outcomes] == [0x0000, 0x0000]
    received = sorted(dcmread(p).Modality for p in (tmp_path / "archive").iterdir() if p.name != "index.dat")
    assert received == ["SEG", "SR"]


def test_rejection_is_read_only_from_an_answer_that_carries_a_result() -> None:
    """An association marked rejected with no A-ASSOCIATE-RJ to read (none yet, or one without its result
    field) has no rejection result: the negotiation is asked again rather than decided."""
    from pynetdicom.association import Association
    from pynetdicom.pdu_primitives import A_ASSOCIATE

    from dicomnode.send.scu import _rejection

    assoc = Association(AE(), "requestor")
    assert _rejection(assoc) is None  # not rejected
    assoc.is_rejected = True
    assert _rejection(assoc) is None  # no answer read
    answer = A_ASSOCIATE()
    assoc.acceptor.primitive = answer
    assert _rejection(assoc) is None  # an answer without a result
    answer.result = 0x02
    assert _rejection(assoc) == 2
