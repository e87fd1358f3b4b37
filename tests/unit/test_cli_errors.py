"""The CLI's one-sentence answer to a configuration it cannot take: the first complaint, where it is, and how
many more there are (none said when there are none)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from dicomnode.cli.context import first_error


class _Limits(BaseModel):
    port: int
    timeout_seconds: float


def _complaint(**values: object) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        _Limits.model_validate(values)
    return caught.value


def test_one_complaint_is_said_alone() -> None:
    assert first_error(_complaint(port="x", timeout_seconds=1.0)) == (
        "port: Input should be a valid integer, unable to parse string as an integer")


def test_more_complaints_are_counted() -> None:
    assert first_error(_complaint(port="x", timeout_seconds="y")) == (
        "port: Input should be a valid integer, unable to parse string as an integer (and 1 more)")
