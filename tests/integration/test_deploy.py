"""The systemd units: ``systemd-analyze verify`` without a word on stderr, and their exposure scores.

``verify`` exits 0 on unknown keys and typos, so any stderr output fails the test. It also checks that
``ExecStart`` exists: the units are verified with the path of this checkout's ``dicomnode`` in place of
``/opt/dicomnode``. The template unit is verified as instance ``@0``. ``systemd-analyze security
--offline=yes`` scores each unit (0 best, 10 worst); the goal is 2.0 or less ("OK").
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.peers import REPO, require

UNITS = ["dicomnode.service", "dicomnode-receive.service", "dicomnode-web.service", "dicomnode-work@.service"]
ROLE_OF = {"dicomnode.service": "serve", "dicomnode-receive.service": "receive", "dicomnode-web.service": "web",
           "dicomnode-work@.service": "work"}
REQUIRED = ["User=dicomnode", "ProtectSystem=strict", "ReadWritePaths=/var/lib/dicomnode", "NoNewPrivileges=yes",
            "PrivateTmp=yes", "Restart=on-failure", "CapabilityBoundingSet="]


def _installed_copy(unit: str, folder: Path) -> Path:
    text = (REPO / "systemd" / unit).read_text()
    text = text.replace("/opt/dicomnode/.venv/bin/dicomnode", str(Path(sys.executable).parent / "dicomnode"))
    path = folder / unit.replace("@.", "@0.")
    path.write_text(text)
    return path


@pytest.mark.parametrize("unit", UNITS)
def test_unit_verifies_cleanly_and_is_hardened(unit: str, tmp_path: Path) -> None:
    text = (REPO / "systemd" / unit).read_text()
    lines = text.splitlines()
    for key in REQUIRED:
        assert key in lines, f"{unit} lacks {key}"
    assert f"ExecStart=/opt/dicomnode/.venv/bin/dicomnode {ROLE_OF[unit]}" in lines
    path = _installed_copy(unit, tmp_path)
    analyze = require("systemd-analyze")
    verify = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr
    security = subprocess.run([analyze, "security", "--offline=yes", str(path)], capture_output=True, text=True,
                              timeout=60, check=False)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", security.stdout + security.stderr)
    assert found is not None, security.stdout[-2000:] + security.stderr[-2000:]
    print(f"\n{unit}: exposure {found[1]} {found[2]}")
    assert float(found[1]) <= 2.0
