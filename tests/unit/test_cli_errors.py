"""The CLI's one-sentence answer to a configuration it cannot take: the first complaint, where it is, and how
many more there are (none said when there are none)."""

from __future__ import annotations

import datetime as dt
import logging
import os
import sqlite3
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError, model_validator
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from dicomnode.cli.context import first_error, timestamp
from dicomnode.cli.main import _failure, main


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


class _Window(BaseModel):
    start: int
    end: int

    @model_validator(mode="after")
    def _ordered(self) -> _Window:
        if self.end < self.start:
            raise ValueError("end before start")
        return self


def test_a_complaint_about_the_whole_configuration_is_said_without_a_place() -> None:
    with pytest.raises(ValidationError) as caught:
        _Window.model_validate({"start": 2, "end": 1})
    assert first_error(caught.value) == "Value error, end before start"


def test_an_invalid_setting_is_exit_2_with_its_place_and_complaint(monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("DICOMNODE_CONFIG", raising=False)
    monkeypatch.setenv("DICOMNODE_PORT", "x")
    umask = os.umask(0o022)
    try:
        assert main(["status"]) == 2
    finally:
        os.umask(umask)
    assert capsys.readouterr().err == ("dicomnode: configuration error: port: Input should be a valid integer, "
                                       "unable to parse string as an integer\n")


def test_a_time_without_a_zone_is_utc_and_one_with_a_zone_keeps_it() -> None:
    assert timestamp("2026-12-01T08:00:00") == dt.datetime(2026, 12, 1, 8, tzinfo=dt.UTC)
    zoned = timestamp("2026-12-01T08:00:00+02:00")
    assert zoned.utcoffset() == dt.timedelta(hours=2)
    assert zoned == dt.datetime(2026, 12, 1, 6, tzinfo=dt.UTC)


def test_a_database_error_is_said_in_the_driver_s_own_words() -> None:
    error = OperationalError("INSERT INTO job VALUES (?)", {}, sqlite3.OperationalError("database is locked"))
    assert _failure(error) == (1, "database error: database is locked")
    assert _failure(SQLAlchemyError("no driver\nfor that URL")) == (1, "database error: no driver for that URL")


def test_an_unexpected_error_is_one_sentence_with_its_frames_only_at_debug() -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("dicomnode")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        error = RuntimeError("boom")
        assert _failure(error) == (1, "unexpected error (RuntimeError): boom")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert [(r.levelno, r.getMessage(), r.exc_info and r.exc_info[1]) for r in records] == [
        (logging.DEBUG, "unexpected error", error)]


def test_a_configuration_file_that_is_not_there_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "node.toml"
    umask = os.umask(0o022)
    try:
        assert main(["--config", str(missing), "status"]) == 2
    finally:
        os.umask(umask)
    error = capsys.readouterr().err
    assert error.startswith("dicomnode: configuration error: ") and str(missing) in error


def test_a_complaint_inside_a_list_names_its_whole_place(monkeypatch: pytest.MonkeyPatch) -> None:
    """``peers.0.port``: the list, the item and the field, joined by dots as the configuration writes them."""

    class _Peer(BaseModel):
        port: int

    class _Config(BaseModel):
        peers: list[_Peer]

    with pytest.raises(ValidationError) as caught:
        _Config.model_validate({"peers": [{"port": "x"}]})
    assert first_error(caught.value) == (
        "peers.0.port: Input should be a valid integer, unable to parse string as an integer")


@pytest.mark.parametrize(("name", "sentence"), [
    ("onnxruntime.capi", "onnxruntime is not installed: install the onnx extra (`pip install 'dicomnode[onnx]'`, "
                         "or `pip install -e '.[onnx]'`)"),
    ("somepackage.sub", "the Python package somepackage is not installed"),
    (None, "this installation of dicomnode is incomplete (No module named 'x')"),
    ("dicomnode.cli.gone", "this installation of dicomnode is incomplete (No module named 'x')"),
])
def test_a_missing_module_is_named_with_how_to_install_it(name: str | None, sentence: str) -> None:
    """The top-level package of the missing module decides the sentence: a known extra says how to install
    it; another package is named; dicomnode's own module, or none, is an incomplete installation."""
    assert _failure(ModuleNotFoundError("No module named 'x'", name=name)) == (1, sentence)


def test_a_usage_error_names_the_command_whose_help_to_read(capsys: pytest.CaptureFixture[str]) -> None:
    umask = os.umask(0o022)
    try:
        assert main(["peers", "add", "ONLYTHEAE"]) == 2
    finally:
        os.umask(umask)
    error = capsys.readouterr().err
    assert error.startswith("dicomnode: ") and error.endswith(" (see `dicomnode peers add --help`)\n"), error
