from __future__ import annotations

import time

from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from dicomnode.admin.rule_tester import judge
from dicomnode.jobs.routing import effective_rules, evaluate, route, search
from dicomnode.settings import Rule
from tests.support.heap import steady_heap

BRAIN = Rule(name="brain", model="deepbet",
             match={"Modality": "^MR$", "BodyPartExamined": "BRAIN|HEAD", "SeriesDescription": "T1|MPRAGE"})


def header(**values: object) -> Dataset:
    ds = Dataset()
    for key, value in values.items():
        setattr(ds, key, value)
    return ds


def test_matching_series() -> None:
    assert evaluate(BRAIN, header(Modality="MR", BodyPartExamined="BRAIN", SeriesDescription="t1 mprage")).matched


def test_knee_does_not_match_and_says_why() -> None:
    result = evaluate(BRAIN, header(Modality="MR", BodyPartExamined="KNEE", SeriesDescription="T1W_aTSE"))
    assert not result.matched
    assert result.reason == "rule brain: BodyPartExamined does not match /BRAIN|HEAD/"


def test_absent_attribute_never_matches() -> None:
    result = evaluate(BRAIN, header(Modality="MR", SeriesDescription="T1"))
    assert result.reason == "rule brain: BodyPartExamined is absent"


def test_nul_padding_is_ignored() -> None:
    dirty = Dataset()
    dirty.add(DataElement(0x00080060, "CS", "MR\x00", validation_mode=config.IGNORE))  # Modality, as received
    assert evaluate(Rule(name="x", model="m", match={"Modality": "^MR$"}), dirty).matched


def test_route_collects_reasons() -> None:
    ct = Rule(name="ct", model="other", match={"Modality": "^CT$"})
    matched, reasons = route([BRAIN, ct], header(Modality="CT", BodyPartExamined="HEAD", SeriesDescription="T1"))
    assert matched == [ct]
    assert reasons == ["rule brain: Modality does not match /^MR$/"]


def test_configured_rules_replace_the_models_default() -> None:
    configured = Rule(name="mine", model="deepbet", match={"Modality": "MR"})
    other_default = Rule(name="d2", model="other", match={})
    assert effective_rules([configured], [BRAIN, other_default]) == [configured, other_default]


def test_multi_valued_attribute_matches_on_any_of_its_values() -> None:
    rule = Rule(name="orig", model="m", match={"ImageType": r"(^|\\)PRIMARY(\\|$)"})
    assert evaluate(rule, header(ImageType=["ORIGINAL", "PRIMARY", "M"])).matched
    refused = evaluate(rule, header(ImageType=["DERIVED", "SECONDARY"]))
    assert refused.reason == r"rule orig: ImageType does not match /(^|\\)PRIMARY(\\|$)/"


# the patterns of the example configuration and the shipped manifests, and the usual shapes of a rule
SAME_AS_RE = ["^MR$", "BRAIN|HEAD", "T1|MPRAGE|MP-RAGE|SPGR|BRAVO|TFL", "^(CR|DX)$", "CHEST|THORAX|LUNG", r"^CT$",
              r"(^|\\)PRIMARY(\\|$)", r"t1.*(sag|ax)", r"^\d+$", r"[0-9]{3}", "", "é", r"\bT2\b", "(?i)flair", "^$"]
VALUES = ["MR", "mr", "BRAIN", "head neck", "t1 mprage", "ORIGINAL\\PRIMARY\\M", "DERIVED\\SECONDARY", "T1 SAG 3D",
          "123", "12a", "", "É", "AX T2 FLAIR", "MRI", "CT\nMR"]


def test_re2_finds_what_re_search_ignoring_case_found() -> None:
    import re

    for pattern in SAME_AS_RE:
        for value in VALUES:
            expected = re.search(pattern, value, re.IGNORECASE) is not None
            assert search(pattern, value) is expected, (pattern, value)


def test_a_polynomial_pattern_is_matched_in_linear_time() -> None:
    """``a*a*...c`` takes Python's backtracking matcher seconds on 20 a's (and years on 10,000)."""
    rule = Rule(name="slow", model="m", match={"SeriesDescription": "a*" * 12 + "c"})
    for length in (20, 10_000):
        with steady_heap():  # a full collection over the session's heap is not what this times
            started = time.perf_counter()
            matched = evaluate(rule, header(SeriesDescription="a" * length)).matched
            elapsed = time.perf_counter() - started
        assert not matched and elapsed < 0.5, length


def test_the_rule_tester_shows_a_missing_description_or_modality_as_empty() -> None:
    """A series whose header lacks SeriesDescription and Modality is listed with empty ones, as the console
    and the CLI show them, never the word None; no rule matches it."""
    header = Dataset()
    header.SeriesInstanceUID = "1.2.3.4"
    (verdict,) = judge([Rule(name="mr", model="deepbet", match={"Modality": "^MR$"})], [header], {})
    assert (verdict.series_uid, verdict.description, verdict.modality, verdict.models) == ("1.2.3.4", "", "", ())
