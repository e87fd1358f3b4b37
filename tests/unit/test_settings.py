from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from dicomnode.log import extra
from dicomnode.settings import Destination, Peer, Rule, Settings


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
            logging.getLogger("dicomnode.test").exception("job crashed", extra=extra(stage="worker"))
    finally:
        logging.getLogger().handlers.clear()
    text = stream.getvalue()
    assert "job crashed" in text and "builtins.ValueError" in text and "test_settings.py" in text
    assert "DOE^JANE" not in text


@pytest.mark.parametrize("host", ["10.0.0.7", "::1", "10.1.0.0/16", "fd00::/8", "pacs.example.org", "pacs-1", "*",
                                  "orthanc_pacs"])
def test_peer_hosts_that_accept_checks_are_kept(host: str) -> None:
    assert Peer(ae_title="MODALITY", host=host).host == host


@pytest.mark.parametrize("host", ["127.0.0.1\x00../../x", "a\nb", "../../etc/passwd", "", "_host", "999.1.1.1",
                                  "-pacs.example.org", "a..b", "10.0.0.0/33", "a/b"])
def test_peer_hosts_that_are_not_addresses_networks_or_names_are_refused(host: str) -> None:
    with pytest.raises(ValidationError, match="must be an IP address, a network"):
        Peer(ae_title="MODALITY", host=host)


@pytest.mark.parametrize("host", ["*", "10.0.0.0/8"])
def test_a_dialled_host_is_one_address_or_name(host: str) -> None:
    with pytest.raises(ValidationError, match="must be an IP address or a host name"):
        Destination(name="archive", ae_title="ARCHIVE", host=host)
    with pytest.raises(ValidationError, match="pacs host"):
        Settings.load(None, pacs=f"PACS@{host}:104")


@pytest.mark.parametrize("ae_title", ["../rules/R1", "A/B", "X?Y", ".."])
def test_a_peer_ae_title_cannot_address_another_resource_in_a_url(ae_title: str) -> None:
    with pytest.raises(ValidationError, match="peer AE title"):
        Peer(ae_title=ae_title)


@pytest.mark.parametrize("name", ["x/../../peers/PEERZ", "..", ".hidden", "a..b", "with space", "x" * 65, ""])
def test_rule_and_destination_names_are_slugs(name: str) -> None:
    with pytest.raises(ValidationError, match="must be 1 to 64 letters"):
        Rule(name=name, model="deepbet")
    with pytest.raises(ValidationError, match="must be 1 to 64 letters"):
        Destination(name=name, ae_title="ARCHIVE")
    with pytest.raises(ValidationError, match="must be 1 to 64 letters"):
        Rule(name="ok", model=name)


@pytest.mark.parametrize(("pattern", "why"), [
    (r"(a)\1", "a back-reference"),
    (r"(?P<x>a)(?P=x)", "a named back-reference"),
    (r"T1(?!W)", "a lookaround assertion"),
    (r"(?<=x)T1", "a lookaround assertion"),
    (r"(?>a+)b", "an atomic group or a possessive quantifier"),
    (r"a++b", "an atomic group or a possessive quantifier"),
])
def test_a_pattern_only_backtracking_can_match_is_refused_naming_keyword_and_why(pattern: str, why: str) -> None:
    with pytest.raises(ValidationError, match=f"rule pattern for SeriesDescription uses {why}, which cannot be "
                                              r"matched in linear time \(RE2\)"):
        Rule(name="r", model="m", match={"SeriesDescription": pattern})


def test_a_pattern_re2_cannot_parse_is_refused_with_re2s_reason() -> None:
    with pytest.raises(ValidationError, match=r"rule pattern for Modality is not a regular expression RE2 accepts: "
                                              r"missing \)"):
        Rule(name="r", model="m", match={"Modality": "(MR"})


def test_the_pattern_length_cap_is_kept() -> None:
    with pytest.raises(ValidationError, match="longer than 256 characters"):
        Rule(name="r", model="m", match={"Modality": "M" * 257})


def test_a_polynomial_pattern_is_accepted_because_matching_is_linear() -> None:
    assert Rule(name="r", model="m", match={"SeriesDescription": "a*" * 12 + "c"}).match


def test_a_backreference_in_the_configuration_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[[rules]]\nname = "twice"\nmodel = "deepbet"\nmatch = { SeriesDescription = "(T1)\\\\1" }\n')
    with pytest.raises(ValidationError,
                       match=r"rules\.0\.match\s+Value error, rule pattern for SeriesDescription uses a back-ref"):
        Settings.load(config)
