"""What an operator sees of a study: ``dicomnode status --study`` and the console's study page."""

from __future__ import annotations

import os

from dicomnode.admin.console import _templates
from dicomnode.admin.studies import study_rows
from dicomnode.node import Node
from tests.support.cli import run_cli


def status_of(node: Node, study_uid: str) -> str:
    """``dicomnode status --study`` against the node's database, as an operator runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMNODE_")}
    env |= {"DICOMNODE_DATA_DIR": str(node.settings.data_dir), "DICOMNODE_MODELS_DIR": str(node.settings.models_dir)}
    done = run_cli(["status", "--study", study_uid], env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def study_page(node: Node, study_uid: str) -> str:
    """The console's study page, rendered from the same rows the page gets."""
    (row,) = study_rows(node.ctx.sessions, study_uid, phi=False)
    return _templates.env.get_template("study.html").render(title="Study", user=None, study=row, timeline=[])
