"""Local evaluation, pure parts: Dice and volumes of two SEGs on one source series; the reference rules."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset

from dicomnode.evaluation.compare import compare
from dicomnode.evaluation.references import rule_matches
from dicomnode.settings import ReferenceRules
from tests.support.segs import reader_seg
from tests.support.synthetic import make_series

VOXEL_ML = 0.8 * 0.9 * 2.0 / 1000


def seg_of(sources: list[Dataset], mask: np.ndarray, maker: str) -> Dataset:
    return reader_seg(sources, mask, manufacturer=maker)


@pytest.fixture(scope="module")
def sources() -> list[Dataset]:
    return make_series(6, 12, 10)


def test_dice_and_volumes_match_numpy(sources: list[Dataset]) -> None:
    node = np.zeros((6, 12, 10), dtype=bool)
    node[1:4, 2:8, 2:6] = True
    reference = node.copy()
    reference[1, 2:8, 2:4] = False  # removed
    reference[5, 0:2, 0:3] = True  # added on a slice the node left empty
    (score,) = compare(seg_of(sources, node, "dicomnode"), seg_of(sources, reference, "reader"))
    expected = 2 * np.count_nonzero(node & reference) / (node.sum() + reference.sum())
    assert score.dice == pytest.approx(expected, abs=1e-12)
    assert score.node_ml == pytest.approx(node.sum() * VOXEL_ML)
    assert score.reference_ml == pytest.approx(reference.sum() * VOXEL_ML)
    assert score.volume_difference_ml == pytest.approx((reference.sum() - node.sum()) * VOXEL_ML)


def test_identical_segs_score_one(sources: list[Dataset]) -> None:
    mask = np.zeros((6, 12, 10), dtype=bool)
    mask[2, 3:5, 3:5] = True
    (score,) = compare(seg_of(sources, mask, "a"), seg_of(sources, mask, "b"))
    assert score.dice == 1.0 and score.node_ml == score.reference_ml


def test_reference_rules() -> None:
    rules = ReferenceRules(series_description="^CORRECTED", manufacturer="ReadStation", calling_aes=["READER1"])
    assert rule_matches(rules, "corrected nodule", "", "PACS") == "series_description"
    assert rule_matches(rules, "AI SEG", "Acme READSTATION 2", "PACS") == "manufacturer"
    assert rule_matches(rules, "AI SEG", "dicomnode", "READER1") == "calling_aes"
    assert rule_matches(rules, "AI SEG", "dicomnode", "PACS") == ""
    assert not ReferenceRules().enabled and rules.enabled
