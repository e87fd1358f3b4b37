from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.net import free_port
from tests.support.peers import NodeProcess, Orthanc


@pytest.fixture(scope="module")
def node(orthanc: Orthanc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """The node as a real process; Orthanc is its PACS, and knows it as modality NODE."""
    process = NodeProcess(tmp_path_factory.mktemp("node"), env={
        "DICOMNODE_PACS": f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}",
        "DICOMNODE_STUDY_IDLE_SECONDS": "2",
        "DICOMNODE_SWEEP_INTERVAL_SECONDS": "0.5",
        "DICOMNODE_MIN_FREE_DISK_MB": "1",
        "DICOMNODE_ADMIN_PORT": str(free_port()),
    }).start()
    orthanc.add_modality("NODE", process.ae_title, process.port)
    yield process
    process.stop()
