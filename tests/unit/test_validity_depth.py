"""Whole or refused: sequences nested up to ``MAX_DEPTH`` deep are an instance's; one more level is refused
(0xC210, saying so), for items of defined and of undefined length."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomnode.store.validity import MAX_DEPTH, file_refusal
from tests.support.synthetic import make_series


def _nested(tmp_path: Path, levels: int, undefined: bool) -> Path:
    """A slice whose ContentSequence holds an item holding a ContentSequence ... ``levels`` deep."""
    ds = make_series(n_slices=1, rows=4, columns=4)[0]
    inner = Dataset()
    inner.CodeValue = "1"
    for _ in range(levels):
        inner.is_undefined_length_sequence_item = undefined
        outer = Dataset()
        outer.ContentSequence = Sequence([inner])
        outer["ContentSequence"].is_undefined_length = undefined
        inner = outer
    ds.ContentSequence = inner.ContentSequence
    ds["ContentSequence"].is_undefined_length = undefined
    path = tmp_path / f"{levels}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("undefined", [False, True], ids=["defined length", "undefined length"])
def test_sequences_as_deep_as_the_limit_are_whole_and_one_more_is_refused(tmp_path: Path, undefined: bool) -> None:
    assert file_refusal(_nested(tmp_path, MAX_DEPTH, undefined), inflated_limit=2**30) is None
    refused = file_refusal(_nested(tmp_path, MAX_DEPTH + 1, undefined), inflated_limit=2**30)
    assert refused is not None and refused.status == 0xC210
    assert f"sequences nested more than {MAX_DEPTH} deep" in refused.reason
