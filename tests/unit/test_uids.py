"""pynetdicom's UID conversions behind the node's cache (dicomnode.net.uids): same values, same errors."""

from __future__ import annotations

import logging

import pytest
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom import pdu_items, presentation, utils
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.presentation import PresentationContext

from dicomnode.net import reactor, uids


@pytest.fixture(autouse=True)
def installed() -> None:
    reactor.install()


def test_every_module_that_imported_set_uid_uses_the_cache() -> None:
    for name in uids.MODULES:
        module = __import__(name, fromlist=["set_uid"])
        assert module.set_uid is not utils.set_uid, name
        assert hasattr(module.set_uid, "cache_info"), name


def test_a_value_converts_as_pynetdicom_converts_it_and_once() -> None:
    convert = pdu_items.set_uid
    value = "1.2.826.0.1.3680043.10.1.7001"
    first = convert(value, "Abstract Syntax Name")
    hits = convert.cache_info().hits
    again, from_bytes = convert(UID(value), "Abstract Syntax Name"), convert(value.encode(), "x")
    assert type(first) is UID and first == utils.set_uid(value, "Abstract Syntax Name") == value
    assert again is first and convert.cache_info().hits == hits + 1
    assert from_bytes == utils.set_uid(value.encode(), "x") == value
    assert convert(None, "x") is None
    assert convert("", "Implementation Class UID") == ""  # empty allowed unless the caller says not
    with pytest.raises(ValueError, match="must not be an empty"):
        convert("", "Application Context Name", False, False)


def test_an_invalid_uid_is_refused_each_time(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="pynetdicom")
    bad = "1.2." + "3" * 70  # over 64 characters
    for _ in range(2):
        with pytest.raises(ValueError, match="must not exceed 64 characters"):
            presentation.set_uid(bad, "abstract_syntax", True, False, True)
    assert sum("Invalid 'abstract_syntax'" in r.getMessage() for r in caplog.records) == 2


def test_a_uid_with_a_private_encoding_keeps_it() -> None:
    private = UID("1.2.826.0.1.3680043.10.1.7002")
    private.set_private_encoding(True, True)
    context = PresentationContext()
    context.abstract_syntax = "1.2.840.10008.5.1.4.1.1.2"
    context.add_transfer_syntax(private)
    converted = presentation.set_uid(private, "x")
    assert converted is not None and converted.is_implicit_VR and converted.is_little_endian
    plain = presentation.set_uid(str(private), "x")
    assert plain == private
    too_long = UID("1.2." + "5" * 70)
    too_long.set_private_encoding(False, True)
    with pytest.raises(ValueError, match=r"^Invalid 'abstract_syntax' value"):  # refused as before, named
        presentation.set_uid(too_long, "abstract_syntax")


def test_the_cache_is_bounded() -> None:
    convert = presentation.set_uid
    for i in range(uids.CACHED + 10):
        convert(f"1.2.826.0.1.3680043.10.2.{i}", "x")
    assert convert.cache_info().currsize == uids.CACHED


def test_an_association_request_decodes_as_before() -> None:
    """A request with the same transfer syntax on many contexts: each item decodes to the value it carries."""
    from pynetdicom.pdu_primitives import A_ASSOCIATE

    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title, primitive.called_ae_title = "SCU", "SCP"
    primitive.maximum_length_received = 16382
    contexts = []
    for i in range(1, 9):
        context = PresentationContext()
        context.context_id = 2 * i - 1
        context.abstract_syntax = f"1.2.840.10008.5.1.4.1.1.{i}"
        context.transfer_syntax = [ExplicitVRLittleEndian]
        contexts.append(context)
    primitive.presentation_context_definition_list = contexts
    from pynetdicom.pdu_primitives import MaximumLengthNotification

    length = MaximumLengthNotification()
    length.maximum_length_received = 16382
    primitive.user_information = [length]
    encoded = A_ASSOCIATE_RQ()
    encoded.from_primitive(primitive)
    decoded = A_ASSOCIATE_RQ()
    decoded.decode(encoded.encode())
    got = decoded.to_primitive().presentation_context_definition_list
    assert [(c.context_id, c.abstract_syntax, c.transfer_syntax) for c in got] == [
        (c.context_id, c.abstract_syntax, [ExplicitVRLittleEndian]) for c in contexts]
