"""Routing rules: which model runs on which series. Pure functions of headers and rules.

Patterns are matched with RE2 (:func:`dicomnode.settings.compile_rule_pattern`): in time linear in the
value's length whatever the pattern, so that a series described to stall a backtracking matcher cannot
delay the routing of other studies.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from dicomnode.settings import Rule, compile_rule_pattern


@functools.lru_cache(maxsize=1024)
def _compiled(pattern: str) -> Any:
    return compile_rule_pattern("the pattern", pattern)


def search(pattern: str, value: str) -> bool:
    """Is ``pattern`` (a rule pattern, validated by :class:`Rule`) found anywhere in ``value``, ignoring case?
    The semantics of ``re.search(pattern, value, re.IGNORECASE)``, in linear time."""
    return _compiled(pattern).search(value) is not None


@dataclass(frozen=True)
class RuleMatch:
    rule: Rule
    matched: bool
    reason: str


def _value(ds: Dataset, keyword: str) -> str | None:
    if keyword not in ds:
        return None
    value = ds.get(keyword)
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).replace("\x00", "").strip()


def evaluate(rule: Rule, header: Dataset) -> RuleMatch:
    """Does ``rule`` match the series whose representative header is ``header``? And if not, why."""
    for keyword, pattern in rule.match.items():
        value = _value(header, keyword)
        if value is None:
            return RuleMatch(rule, False, f"rule {rule.name}: {keyword} is absent")
        if not search(pattern, value):
            return RuleMatch(rule, False, f"rule {rule.name}: {keyword} does not match /{pattern}/")
    return RuleMatch(rule, True, f"rule {rule.name} matched")


def route(rules: Sequence[Rule], header: Dataset) -> tuple[list[Rule], list[str]]:
    """The rules that match ``header`` and, for the others, why not."""
    matched: list[Rule] = []
    reasons: list[str] = []
    for rule in rules:
        result = evaluate(rule, header)
        if result.matched:
            matched.append(rule)
        else:
            reasons.append(result.reason)
    return matched, reasons


def effective_rules(configured: Iterable[Rule], defaults: Iterable[Rule]) -> list[Rule]:
    """The configured rules; a model that no configured rule names keeps its manifest's default rule."""
    configured = list(configured)
    named = {r.model for r in configured}
    return configured + [r for r in defaults if r.model not in named]
