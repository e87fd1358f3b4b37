"""The import contracts (pyproject.toml, docs/architecture.md) hold, and a back-import breaks them.

Each case copies the package, adds one import that runs back up the data flow, and runs ``lint-imports``
on the copy: the contract must fail and name that import. The arrows are the ones the layout step
removed; a new one of their kind fails CI the same way.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}  # the copy's package first, before the editable install
    return subprocess.run([str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache", "--no-logo"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_the_tree_keeps_every_contract() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


# (module that gains the import, module it imports): each runs back up the flow, or across the admin routers
BACK_IMPORTS = [
    ("dicomnode.jobs.routing", "dicomnode.inference.volume"),
    ("dicomnode.inference.registry", "dicomnode.jobs.models"),
    ("dicomnode.receive.handlers", "dicomnode.admin.auth"),
    ("dicomnode.pipeline", "dicomnode.admin.auth"),
    ("dicomnode.audit.trail", "dicomnode.jobs.models"),
    ("dicomnode.audit.anchor", "dicomnode.store.spool"),
    ("dicomnode.store.index", "dicomnode.receive.limits"),
    ("dicomnode.jobs.repository", "dicomnode.store.index"),
    ("dicomnode.dicomweb.results", "dicomnode.pipeline"),
    ("dicomnode.results.seg", "dicomnode.send.scu"),
    ("dicomnode.fl.server", "training"),
    ("dicomnode.admin.api", "dicomnode.admin.console"),
]


@pytest.mark.parametrize(("module", "imported"), BACK_IMPORTS, ids=[f"{m} -> {i}" for m, i in BACK_IMPORTS])
def test_a_back_import_breaks_a_contract(tmp_path: Path, module: str, imported: str) -> None:
    shutil.copytree(REPO / "dicomnode", tmp_path / "dicomnode", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "training", tmp_path / "training", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    source = (tmp_path / module.replace(".", "/")).with_suffix(".py")
    source.write_text(source.read_text() + f"\nimport {imported}  # the back-import under test\n")

    result = lint_imports(tmp_path)

    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{module} -> {imported}" in result.stdout, result.stdout
