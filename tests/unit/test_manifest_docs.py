"""models/README.md documents every manifest key, in the right TOML table, with its true default.

The reference part of the README ("## Manifest keys (version 2)") is one ``| key | default | meaning |``
table per TOML table, each introduced by a paragraph that starts with the table's name as TOML writes it
(``[input.intensity]``, ``[[files]]``, ``{scheme, value, meaning}`` for codes) or with "Top level". This
test walks the pydantic models of :mod:`dicomnode.inference.manifest` from :class:`Manifest` down and
checks each field against its row, and that the README has no row or table the code does not have.
"""

from __future__ import annotations

import itertools
import re
import types
import typing
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from dicomnode.inference.manifest import CodeSpec, Manifest
from tests.support.peers import REPO

README = REPO / "models" / "README.md"
TOP = "top level"
CODE = "{scheme, value, meaning}"  # every CodeSpec, wherever it is used, is documented in this one table

# Fields that are not manifest keys. ``directory`` is the folder the manifest was read from:
# Manifest.read sets it from the manifest's path (it overrides any value in the file).
INTERNAL = {(TOP, "directory")}

# Keys with a default in the model that a validator (Manifest._outputs) requires for one task.
REQUIRED_FOR = {("[output]", "labels"): "segmentation", ("[output]", "classes"): "classification"}


def readme_tables() -> dict[str, dict[str, str]]:
    """Section name -> key -> default cell, from the tables under "## Manifest keys (version 2)"."""
    text = README.read_text()
    start = text.index("## Manifest keys (version 2)")
    blocks = text[start:text.index("\n## ", start + 1)].split("\n\n")
    tables: dict[str, dict[str, str]] = {}
    for intro, block in itertools.pairwise(blocks):
        lines = block.strip().splitlines()
        if not lines or not all(line.startswith("|") for line in lines):
            continue
        named = re.match(r"`([^`]+)`", intro.strip())
        assert named or intro.startswith("Top level"), \
            f"models/README.md: a table follows {intro.strip()!r}, which does not start with the TOML table's name"
        section = named.group(1) if named else TOP
        assert section not in tables, f"models/README.md: two tables for {section}"
        rows = tables[section] = {}
        header, _rule, *body = ([cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines)
        assert header == ["key", "default", "meaning"], f"models/README.md {section}: columns {header}"
        for cells in body:
            assert len(cells) == 3, f"models/README.md {section}: row {cells} needs key, default, meaning"
            for key in re.findall(r"`([^`]+)`", cells[0]):
                assert key not in rows, f"models/README.md {section}: two rows for {key}"
                rows[key] = cells[1]
    return tables


def toml(value: Any) -> str:
    """A default as a manifest writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, BaseModel):  # a table left out: all its keys at their defaults
        assert value == type(value)(), f"{type(value).__name__}: a default table not at its own defaults"
        return "{}"
    raise TypeError(f"no TOML rendering for {value!r}")


def default_cell(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    assert value is not PydanticUndefined
    return "none" if value is None else "`" + toml(value) + "`"


def nested(annotation: Any) -> tuple[type[BaseModel], bool] | None:
    """The model inside a field's annotation (``X``, ``X | None``, ``tuple[X, ...]``) and whether it repeats."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        found = [n for arg in typing.get_args(annotation) if (n := nested(arg)) is not None]
        return found[0] if found else None
    if origin in (tuple, list):
        found = [n for arg in typing.get_args(annotation) if arg is not Ellipsis and (n := nested(arg))]
        return (found[0][0], True) if found else None
    return None


def expected() -> dict[str, dict[str, str]]:
    """Section name -> key -> default cell, from the code."""
    sections: dict[str, dict[str, str]] = {}

    def walk(model: type[BaseModel], section: str, path: str) -> None:
        rows = sections.setdefault(section, {})
        for key, field in model.model_fields.items():
            if (section, key) in INTERNAL:
                continue
            task = REQUIRED_FOR.get((section, key))
            rows[key] = f"required for {task}" if task else default_cell(field)
            inner = nested(field.annotation)
            if inner is None:
                continue
            child, repeats = inner
            dotted = f"{path}.{key}" if path else key
            if child is CodeSpec:
                if CODE not in sections:
                    walk(CodeSpec, CODE, "")
            else:
                walk(child, f"[[{dotted}]]" if repeats else f"[{dotted}]", dotted)

    walk(Manifest, TOP, "")
    return sections


EXPECTED = expected()


@pytest.fixture(scope="module")
def documented() -> dict[str, dict[str, str]]:
    return readme_tables()


def test_the_walk_finds_every_section() -> None:
    assert set(EXPECTED) == {TOP, "[[files]]", "[default_rule]", "[remote]", "[input]", "[input.intensity]",
                             "[input.tiling]", "[input.priors]", "[output]", "[[output.labels]]", "[[output.classes]]",
                             "[output.explanation]", "[output.finding]", "[reference]", CODE}


@pytest.mark.parametrize("section", sorted(EXPECTED))
def test_every_key_has_a_row_with_its_default(section: str, documented: dict[str, dict[str, str]]) -> None:
    assert section in documented, f"models/README.md has no table for {section}"
    rows = documented[section]
    problems = [f"{section} {key}: no row in models/README.md" for key in EXPECTED[section] if key not in rows]
    problems += [f"{section} {key}: models/README.md says default {rows[key]}, the code has {want}"
                 for key, want in EXPECTED[section].items() if key in rows and rows[key] != want]
    problems += [f"{section} {key}: documented in models/README.md but not a manifest key"
                 for key in rows if key not in EXPECTED[section]]
    assert not problems, "\n".join(problems)


def test_the_readme_has_no_table_the_code_lacks(documented: dict[str, dict[str, str]]) -> None:
    assert set(documented) <= set(EXPECTED), f"unknown tables: {sorted(set(documented) - set(EXPECTED))}"


def test_a_key_required_for_a_task_is_refused_without_it() -> None:
    base = {"manifest_version": 2, "id": "m", "version": "1", "name": "m", "licence": "x", "intended_use": "x",
            "files": [{"name": "model.onnx", "sha256": "0" * 64}], "input": {}, "output": {}}
    for (section, key), task in REQUIRED_FOR.items():
        assert section == "[output]", "only output keys are required for a task"
        with pytest.raises(ValueError, match=f"needs output.{key}"):
            Manifest.model_validate({**base, "task": task})
