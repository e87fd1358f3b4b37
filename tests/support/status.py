"""What an operator sees of a study: ``dicomnode status --study`` and the console's study page."""

from __future__ import annotations

import os
import subprocess
import sys

from dicomnode.admin.console import _templates
from dicomnode.admin.studies import study_rows
from dicomnode.node import Node
from tests.support.peers import REPO


def status_of(node: Node, study_uid: str) -> str:
    """``dicomnode status --study`` against the node's database, as an operator runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMNODE_")}
    env |= {"DICOMNODE_DATA_DIR": str(node.settings.data_dir), "DICOMNODE_MODELS_DIR": str(node.settings.models_dir)}
    done = subprocess.run([sys.executable, "-m", "dicomnode", "status", "--study", study_uid], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def study_page(node: Node, study_uid: str) -> str:
    """The console's study page, rendered from the same rows the page gets."""
    (row,) = study_rows(node.ctx.sessions, study_uid, phi=False)
    return _templates.env.get_template("study.html").render(title="Study", user=None, study=row, timeline=[])
