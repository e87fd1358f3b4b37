"""A box-shaped label's SEG in one synthetic MR series, as the node builds it, with what its SR is built from
(the unit and integration tests of results/ build their SRs on it)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from dicomnode.inference.registry import Manifest
from dicomnode.inference.volume import Volume, build_volume
from dicomnode.results.equipment import ResultIdentity
from dicomnode.results.sanitise import sanitise_headers
from dicomnode.results.seg import build_seg
from dicomnode.results.sr import segment_volumes_ml
from tests.support.synthetic import make_series


@dataclass(frozen=True)
class BoxSeg:
    series: list[Dataset]
    volume: Volume
    labels: np.ndarray
    sources: list[Dataset]
    identity: ResultIdentity
    seg: Dataset
    volumes: dict[int, float]  # segment_volumes_ml's, for build_sr


def box_seg(manifest: Manifest, series: list[Dataset] | None = None, slices: slice = slice(2, 7)) -> BoxSeg:
    """Label 1 in ``slices`` (default 2-6), rows 4-9, columns 3-8 of ``series`` (default: a new 10-slice 16x12 MR
    series)."""
    series = series or make_series(n_slices=10, rows=16, columns=12)
    volume = build_volume(series)
    labels = np.zeros(volume.array.shape, np.uint8)
    labels[slices, 4:10, 3:9] = 1
    sources = sanitise_headers(volume.datasets)
    identity = ResultIdentity.for_job(str(series[0].SeriesInstanceUID), 7, manifest)
    seg = build_seg(sources, labels, manifest, identity)
    return BoxSeg(series, volume, labels, sources, identity, seg,
                  segment_volumes_ml(labels, volume.voxel_volume_mm3, manifest))
