from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from dicomnode.settings import Peer, Settings


def test_defaults() -> None:
    settings = Settings.load(None)
    assert (settings.ae_title, settings.port, settings.study_idle_seconds) == ("DICOMNODE", 11112, 5.0)
    assert settings.db_url.startswith("sqlite:///") and settings.db_url.endswith("dicomnode.db")
    assert settings.pacs is None and settings.known_peers == ()


def test_environment_overrides_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "node.toml"
    config.write_text('ae_title = "FROMTOML"\nport = 4000\npacs = "PACS@10.0.0.1:104"\n'
                      '[[peers]]\nae_title = "MODALITY"\nhost = "10.1.0.0/16"\n')
    monkeypatch.setenv("DICOMNODE_CONFIG", str(config))
    monkeypatch.setenv("DICOMNODE_PORT", "4100")
    monkeypatch.setenv("DICOMNODE_STUDY_IDLE_SECONDS", "2.5")
    settings = Settings.load()
    assert settings.ae_title == "FROMTOML"
    assert settings.port == 4100
    assert settings.study_idle_seconds == 2.5
    assert settings.pacs == Peer(ae_title="PACS", host="10.0.0.1", port=104)
    assert [p.ae_title for p in settings.known_peers] == ["PACS", "MODALITY"]


def test_pacs_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICOMNODE_PACS", "ORTHANC@127.0.0.1:4242")
    monkeypatch.setenv("DICOMNODE_DATABASE_URL", "postgresql+psycopg://u@h/db")
    settings = Settings.load()
    assert str(settings.pacs) == "ORTHANC@127.0.0.1:4242"
    assert settings.db_url == "postgresql+psycopg://u@h/db"


@pytest.mark.parametrize("value", ["NOPORT@host", "@host:1", "A" * 17 + "@h:1", "X@h:99999"])
def test_bad_pacs_is_refused(value: str) -> None:
    with pytest.raises(ValidationError, match="pacs"):
        Settings.load(None, pacs=value)


def test_bad_ae_title_is_refused() -> None:
    with pytest.raises(ValidationError, match="AE title"):
        Settings.load(None, ae_title="BACK\\SLASH")


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Settings.load(tmp_path / "absent.toml")


def test_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "config" / "dicomnode.example.toml"
    settings = Settings.load(example)
    assert settings.ae_title == "DICOMNODE"
    assert settings.rules and settings.rules[0].model == "deepbet"


def test_every_setting_is_documented_in_the_example() -> None:
    example = (Path(__file__).resolve().parents[2] / "config" / "dicomnode.example.toml").read_text()
    undocumented = [name for name in Settings.model_fields
                    if f"{name} =" not in example and f"[[{name}]]" not in example]
    assert undocumented == []


def test_logged_tracebacks_withhold_exception_messages() -> None:
    import io
    import logging

    from dicomnode.log import setup_logging

    setup_logging("INFO")
    stream = io.StringIO()
    handler = logging.getLogger().handlers[0]
    handler.setStream(stream)  # type: ignore[attr-defined]
    try:
        name = "DOE" + "^JANE"  # built at run time: the traceback's source lines must not show it either
        try:
            raise ValueError(f"PatientName {name} violates a constraint")
        except ValueError:
            logging.getLogger("dicomnode.test").exception("job crashed")
    finally:
        logging.getLogger().handlers.clear()
    text = stream.getvalue()
    assert "job crashed" in text and "builtins.ValueError" in text and "test_settings.py" in text
    assert "DOE^JANE" not in text
