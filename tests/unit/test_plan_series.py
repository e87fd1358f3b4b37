"""The completion sweep's decision for one series (store/completion.py ``plan_series``): the rules that
match, or why it is skipped, in the words the study's reason and `status` show."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset

from dicomnode.inference.volume import check_usable
from dicomnode.settings import Rule
from dicomnode.store.completion import plan_series
from tests.support.synthetic import make_radiograph, make_series

RULES = [Rule(name="mr", model="deepbet", match={"Modality": "MR"})]


def _reader(headers: list[Dataset]) -> object:
    def read(_paths: Sequence[str]) -> list[Dataset]:
        return headers
    return read


def test_a_usable_series_is_routed_by_its_rules() -> None:
    series = make_series(n_slices=4, rows=8, columns=8)
    plan = plan_series(7, ["a"] * 4, RULES, check_usable, _reader(series))  # type: ignore[arg-type]
    assert (plan.series_id, plan.skipped, [r.name for r in plan.rules], plan.reason) == (7, False, ["mr"],
                                                                                         "matched: mr")


def test_a_single_projection_image_is_usable() -> None:
    """A CR or DX image has no Image Orientation (Patient): one image of it is a usable series."""
    radiograph = make_radiograph(np.zeros((8, 8), np.uint16))
    assert "ImageOrientationPatient" not in radiograph
    plan = plan_series(1, ["a"], [], check_usable, _reader([radiograph]))  # type: ignore[arg-type]
    assert (plan.skipped, plan.reason) == (False, "no rule matched: no rules configured")


def test_a_series_no_model_can_read_is_skipped_with_the_reason() -> None:
    series = make_series(n_slices=4, rows=8, columns=8)
    series[2].Rows, series[2].Columns = 16, 16  # one slice of another size: no volume
    plan = plan_series(3, ["a"] * 4, RULES, check_usable, _reader(series))  # type: ignore[arg-type]
    assert plan.skipped is True and plan.rules == []
    assert plan.reason.startswith("skipped: ") and "instances could not be read" not in plan.reason


def test_a_series_whose_files_cannot_be_read_is_skipped_saying_so() -> None:
    def unreadable(_paths: Sequence[str]) -> list[Dataset]:
        raise OSError("gone")

    plan = plan_series(4, ["a"], RULES, check_usable, unreadable)
    assert (plan.skipped, plan.reason) == (True, "skipped: instances could not be read (OSError)")
