"""Crash safety: SIGKILL the whole node while it receives, runs a job, has built results, and sends.

Each kill is checked to have landed in its phase, and after each restart: no acknowledged instance
lost, the study's job SUCCEEDED (never left QUEUED or RUNNING), and the PACS received exactly one result
set, counted as deliveries (tests/support/soak.py). CI runs DICOMNODE_CRASH_ITERATIONS kills (default 3,
each in another phase); ``pytest -m slow`` and ``bench/soak.py`` run 20. The seed is printed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.peers import Orthanc
from tests.support.soak import Soak

pytestmark = pytest.mark.e2e

ITERATIONS = int(os.environ.get("DICOMNODE_CRASH_ITERATIONS", "3"))
SEED = int(os.environ.get("DICOMNODE_CRASH_SEED", "1234"))


@pytest.fixture
def slow_pacs(tmp_path: Path) -> Iterator[Orthanc]:
    """A PACS that takes 0.3 s over each C-STORE: the send phase is long enough to land a kill in."""
    pacs = Orthanc(tmp_path / "orthanc", receive_delay=0.3).start()
    yield pacs
    pacs.stop()


def test_sigkill_sample_loses_nothing_and_delivers_once(slow_pacs: Orthanc, tmp_path: Path) -> None:
    print(f"\nsoak seed {SEED}")
    figures = Soak(tmp_path, slow_pacs, SEED).run(ITERATIONS)
    print(figures.line())
    assert (figures.kills, figures.lost, figures.result_sets) == (ITERATIONS, 0, ITERATIONS)
    assert len(figures.by_phase) == min(ITERATIONS, 4)  # each kill in another phase


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_sigkill_twenty_times(slow_pacs: Orthanc, tmp_path: Path) -> None:
    print(f"\nsoak seed {SEED}")
    figures = Soak(tmp_path, slow_pacs, SEED).run(20)
    print(figures.line())
    assert (figures.kills, figures.lost, figures.result_sets) == (20, 0, 20)
